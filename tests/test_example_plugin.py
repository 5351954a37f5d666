"""The example plugin of docs/plugins.md, built and installed for real, found through its
entry point by a separate `python -m topgun` process.

It is installed with pip into a temporary directory (never into .venv), offline, with the
hatchling of .venv as build backend; the subprocesses see it through PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCE = ROOT / "tests" / "example_plugin"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the installed example plugin (module + dist-info)."""
    target = tmp_path_factory.mktemp("example-plugin-site")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target),
            str(PLUGIN_SOURCE),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return target


def topgun(site: Path, *args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m topgun ARGS` with the example plugin importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPGUN_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    env.update(environ)
    return subprocess.run(
        [sys.executable, "-m", "topgun", *args], env=env, capture_output=True, text=True
    )


def listed(site: Path, **environ: str) -> dict[str, dict[str, Any]]:
    result = topgun(site, "plugins", "--json", **environ)
    assert result.returncode == 0, result.stderr
    return {info["name"]: info for info in json.loads(result.stdout)}


def test_installed_plugin_is_discovered_with_its_version_and_hooks(site: Path) -> None:
    assert listed(site)["example"] == {
        "name": "example",
        "version": "0.2.0",
        "distribution": "topgun-example-plugin",
        "hooks": ["before_op", "register_codecs", "register_commands"],
        "builtin": False,
    }


def test_its_command_runs(site: Path) -> None:
    result = topgun(site, "hello", "Ada")
    assert (result.returncode, result.stdout) == (0, "Hello, Ada, from the example plugin!\n")


def test_disabling_it_hides_it_and_its_command(site: Path) -> None:
    assert "example" not in listed(site, TOPGUN_DISABLE_PLUGINS="example")
    result = topgun(site, "hello", TOPGUN_DISABLE_PLUGINS="example")
    assert result.returncode == 2
    assert "No such command 'hello'" in result.stderr


def test_load_plugins_selects_it_or_nothing(site: Path) -> None:
    assert "example" in listed(site, TOPGUN_LOAD_PLUGINS="example")
    assert listed(site, TOPGUN_LOAD_PLUGINS="") == {}


def test_docs_show_the_example_plugin_verbatim() -> None:
    """docs/plugins.md walks through this very plugin, so it must not drift from it."""
    page = (ROOT / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"^```(?:python|toml)\n(.*?)^```", page, re.S | re.M)
    for source in ("topgun_example_plugin.py", "pyproject.toml"):
        assert (PLUGIN_SOURCE / source).read_text() in blocks, f"docs/plugins.md lacks {source}"
