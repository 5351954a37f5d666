#!/usr/bin/env python3
"""Developer entry point: set up the workspace, run the server, run every check.

    python3 dev.py serve [ARGS...]   start `topgun serve` (SQLite; `--dev` unless a JWT key is set)
    python3 dev.py test [PYTEST ARGS...]   lint, type-check, build the docs, run the tests
    python3 dev.py setup             only (re)create .venv and install the workspace
    python3 dev.py run CMD [ARGS...] run a command inside .venv
                                     (e.g. `run python bench/lww_merge.py`)

Needs only Python >= 3.11 and pip. Set-up creates `.venv` beside this file and installs
every workspace member (the folders matched by `[tool.topgun.workspace] members` in
pyproject.toml) in editable mode, plus the `dev` dependency group. It records a stamp
of its inputs, so a re-run with nothing changed skips straight to the command.
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".topgun-setup-stamp"
# PyTorch for sentence-transformers (ext-vector). Installed on its own, before the workspace,
# so that pip takes this exact CPU build instead of resolving a several-GB CUDA build for
# sentence-transformers' unpinned `torch`. Never pinned in any package's metadata.
TORCH = "2.13.0"


def _root_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def members() -> list[Path]:
    """Every workspace member folder, in a stable order (core first)."""
    patterns = _root_config()["tool"]["topgun"]["workspace"]["members"]
    found: list[Path] = []
    for pattern in patterns:
        for path in sorted(glob.glob(str(ROOT / pattern))):
            p = Path(path)
            if (p / "pyproject.toml").is_file() and p not in found:
                found.append(p)
    return found


def _stamp(dists: list[Path]) -> str:
    h = hashlib.sha256()
    for f in [Path(__file__), ROOT / "pyproject.toml", *(d / "pyproject.toml" for d in dists)]:
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


def _run(cmd: list[str], **kw: object) -> int:
    return subprocess.call(cmd, cwd=ROOT, **kw)  # type: ignore[call-overload]


def setup() -> None:
    """Create .venv and install the workspace, unless nothing changed since last time."""
    dists = members()
    stamp = _stamp(dists)
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text() == stamp:
        return
    if not PYTHON.exists():
        print(f"dev.py: creating {VENV.relative_to(ROOT)}", flush=True)
        venv.create(VENV, with_pip=True)
    _install_torch()
    dev_group = _root_config().get("dependency-groups", {}).get("dev", [])
    cmd = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for d in dists:
        cmd += ["-e", str(d)]
    cmd += dev_group
    print(f"dev.py: installing {len(dists)} workspace member(s) and dev tools", flush=True)
    if _run(cmd) != 0:
        sys.exit("dev.py: pip install failed (see above)")
    STAMP.write_text(stamp)


def _install_torch() -> None:
    """`pip install torch==TORCH` unless that version is already in .venv (a cheap check)."""
    probe = "import importlib.metadata as m; print(m.version('torch'))"
    found = subprocess.run(
        [str(PYTHON), "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    if found.split("+")[0] == TORCH:
        return
    print(f"dev.py: installing torch=={TORCH} (CPU build)", flush=True)
    cmd = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if _run([*cmd, f"torch=={TORCH}"]) != 0:
        sys.exit("dev.py: pip install torch failed (see above)")


def _venv_env() -> dict[str, str]:
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = str(VENV)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONHOME", None)
    return env


def test(args: list[str]) -> int:
    """Lint, type-check, strict docs build, then pytest (last, so its summary closes the run)."""
    env = _venv_env()
    steps = [
        ("ruff", [str(BIN / "ruff"), "check", "."]),
        ("ruff format", [str(BIN / "ruff"), "format", "--check", "--quiet", "."]),
        (
            "mypy",
            [
                str(BIN / "mypy"),
                "core/src/topgun",
                "ext-audit/src/topgun_audit",
                "ext-crypto/src",
                "ext-compress/src",
                "ext-vector/src/topgun_vector",
                "plugins/postgres/src/topgun_postgres",
                "plugins/tiered/src/topgun_tiered",
            ],
        ),
        ("mkdocs", [str(BIN / "mkdocs"), "build", "--strict", "--quiet", "-d", str(VENV / "site")]),
    ]
    for name, cmd in steps:
        print(f"dev.py: {name}", flush=True)
        if _run(cmd, env=env) != 0:
            print(f"dev.py: {name} failed", file=sys.stderr)
            return 1
    return _run([str(PYTHON), "-m", "pytest", *args], env=env)


def _dev_flag(args: list[str]) -> list[str]:
    """`--dev` (a JWT secret made for this run, and a token printed for it), unless a key
    or a configuration file is given through the flags or the environment."""
    configured = any(a.startswith(("--jwt-", "--config", "--dev")) for a in args) or any(
        name in os.environ
        for name in ("TOPGUN_AUTH_JWT_SECRET", "TOPGUN_AUTH_JWT_PUBLIC_KEY", "TOPGUN_CONFIG")
    )
    return [] if configured else ["--dev"]


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in {"setup", "test", "serve", "run"}:
        print(f"dev.py: unknown command {command!r}\n{__doc__}", file=sys.stderr)
        return 2
    setup()
    if command == "setup":
        return 0
    if command == "test":
        return test(rest)
    if command == "serve":
        return _run([str(BIN / "topgun"), "serve", *_dev_flag(rest), *rest], env=_venv_env())
    if not rest:
        print("dev.py: run needs a command", file=sys.stderr)
        return 2
    return _run(rest, env=_venv_env())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
