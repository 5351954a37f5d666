"""The server configuration: defaults, TOML < environment < flags, errors naming the key."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import click
import msgspec
import pytest
from click.testing import CliRunner

from topgun.hooks import PluginError, TopgunPluginManager, hookimpl, make_plugin_manager
from topgun.server import (
    CLI_FLAGS,
    AuthConfig,
    ConfigError,
    ConfigWarning,
    Policy,
    Secret,
    ServerConfig,
    TLSConfig,
    config_options,
    config_sections,
    environment_variables,
    load_config,
    read_config,
    validate_config,
)
from topgun.server.config import MapOptions
from topgun.storage import WriteBehindConfig

ROOT = Path(__file__).resolve().parents[3]
SECRET = "s3cret-" + "x" * 40


def error(*args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return str(info.value)


# --- defaults and precedence ---------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    config = load_config()
    assert config == ServerConfig()
    assert (config.host, config.port, config.data_dir) == ("127.0.0.1", 8080, Path("topgun-data"))
    assert config.node_id is None
    assert config.storage.backend == "sqlite"
    assert config.auth.auth_timeout_ms == 10_000
    assert config.heartbeat_timeout_ms == 20_000
    assert config.max_frame_bytes == 64 * 1024 * 1024
    assert config.max_outbound_bytes == 16 * 1024 * 1024
    coalescing = config.coalescing
    assert (coalescing.max_delay_ms, coalescing.max_batch_size) == (2, 500)
    assert coalescing.max_batch_bytes == 256 * 1024
    connections = config.connections
    assert (connections.max_new_per_second, connections.max_unauthenticated) == (100, 1000)
    assert (config.hlc.max_drift_ms, config.hlc.strict) == (60_000, False)
    assert config.policies == ()
    assert not config.tls.enabled


def test_toml_then_environment_then_overrides_win() -> None:
    toml = "port = 1000\nhost = 'toml-host'\ndata_dir = '/toml'\n"
    environ = {"TOPGUN_PORT": "2000", "TOPGUN_HOST": "env-host"}
    config = load_config(toml, environ=environ, overrides={"port": 3000})
    assert (config.port, config.host, config.data_dir) == (3000, "env-host", Path("/toml"))
    assert load_config(toml, environ=environ).port == 2000
    assert load_config(toml).port == 1000


def test_tables_merge_key_by_key_across_layers() -> None:
    toml = "[auth]\nissuer = 'idp'\naudience = 'toml'\n"
    config = load_config(
        toml,
        environ={"TOPGUN_AUTH_AUTH_TIMEOUT_MS": "500"},
        overrides={"auth.audience": "flag"},
    )
    assert config.auth == AuthConfig(issuer="idp", audience="flag", auth_timeout_ms=500)


def test_environment_values_are_parsed_by_the_key_type() -> None:
    environ = {
        "TOPGUN_PORT": "9000",
        "TOPGUN_HLC_STRICT": "yes",
        "TOPGUN_HLC_MAX_DRIFT_MS": "0",
        "TOPGUN_STORAGE_CODECS": " zstd, aes-gcm ,",
        "TOPGUN_STORAGE_OPTIONS": '{"path": "x.db", "pool": 4}',
        "TOPGUN_DATA_DIR": "/var/lib/topgun",
        "TOPGUN_AUTH_JWT_SECRET": SECRET,
        "TOPGUN_POLICIES": '[{"role": "USER", "mapNamePattern": "*", "actions": ["READ"]}]',
        "PATH": "/usr/bin",  # not ours: ignored
    }
    config = load_config(environ=environ)
    assert config.port == 9000
    assert config.hlc.strict is True
    assert config.hlc.max_drift_ms == 0
    assert config.storage.codecs == ("zstd", "aes-gcm")
    assert config.storage.options == {"path": "x.db", "pool": 4}
    assert config.data_dir == Path("/var/lib/topgun")
    assert config.auth.jwt_secret == Secret(SECRET)
    assert config.policies == (Policy("USER", "*", ("READ",)),)


@pytest.mark.parametrize(
    ("word", "value"),
    [("1", True), ("true", True), ("ON", True), ("0", False), ("No", False), ("off", False)],
)
def test_boolean_words_in_the_environment(word: str, value: bool) -> None:
    assert load_config(environ={"TOPGUN_HLC_STRICT": word}).hlc.strict is value


def test_an_empty_variable_unsets_an_optional_key() -> None:
    config = load_config("node_id = 'node-1'", environ={"TOPGUN_NODE_ID": ""})
    assert config.node_id is None


def test_every_key_has_a_variable_named_after_its_path() -> None:
    variables = environment_variables()
    assert variables["TOPGUN_AUTH_JWT_SECRET"] == ("auth", "jwt_secret")
    assert variables["TOPGUN_PORT"] == ("port",)
    assert variables["TOPGUN_COALESCING_MAX_BATCH_BYTES"] == ("coalescing", "max_batch_bytes")
    assert variables["TOPGUN_POLICIES"] == ("policies",)
    assert "TOPGUN_SECTIONS" not in variables
    assert len(variables) == len(set(variables.values()))


def test_policies_accept_the_typescript_spelling() -> None:
    toml = """
[[policies]]
role = "USER"
mapNamePattern = "todos-{userId}*"
actions = ["READ", "PUT"]
allowedFields = ["title"]

[[policies]]
role = "ADMIN_LITE"
map_name_pattern = "*"
actions = ["ALL"]
"""
    assert load_config(toml).policies == (
        Policy("USER", "todos-{userId}*", ("READ", "PUT"), ("title",)),
        Policy("ADMIN_LITE", "*", ("ALL",)),
    )
    both = "[[policies]]\nrole='U'\nmapNamePattern='a'\nmap_name_pattern='b'\nactions=['READ']"
    assert error(both) == (
        "config.toml: [[policies]] #1: both mapNamePattern and map_name_pattern are set"
    )


# --- errors name the key and where it was set ----------------------------------------------


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[auth]\nauth_timeout_ms = 'abc'",
            "config.toml: [auth] auth_timeout_ms: expected int, got 'abc'",
        ),
        (
            "[auth]\nauth_timeout_ms = 0",
            "config.toml: [auth] auth_timeout_ms: expected int >= 1, got 0",
        ),
        ("port = 70000", "config.toml: port: expected int <= 65535, got 70000"),
        ("port = '8080'", "config.toml: port: expected int, got '8080'"),  # TOML is typed
        ("host = ''", "config.toml: host: expected str of length >= 1, got ''"),
        (
            "node_id = 'Node_1'",
            "config.toml: node_id: expected str matching regex '^[0-9a-z-]+$', got 'Node_1'",
        ),
        ("[hlc]\nstrict = 'yes'", "config.toml: [hlc] strict: expected bool, got 'yes'"),
        ("storage = 3", "config.toml: [storage]: expected object, got 3"),
        ("[storage]\nmax_batch = 0", "config.toml: [storage] max_batch: expected int >= 1, got 0"),
        (
            "[[policies]]\nrole = 'U'\nmap_name_pattern = '*'\nactions = ['READ', 'WRITE']",
            "config.toml: [[policies]] #1 actions[1]: expected one of ALL, PUT, READ, REMOVE, "
            "got 'WRITE'",
        ),
        (
            "[[policies]]\nrole = 'U'\nactions = ['READ']",
            "config.toml: [[policies]] #1: missing required key 'map_name_pattern'",
        ),
        (
            "[tls]\ncert_file = 'cert.pem'",
            "config.toml: [tls]: cert_file and key_file go together; set both or neither",
        ),
    ],
)
def test_toml_errors_name_the_key(toml: str, message: str) -> None:
    assert error(toml) == message


def test_unknown_toml_keys_are_errors_with_a_suggestion() -> None:
    assert error("prot = 1") == "config.toml: unknown key 'prot'; did you mean 'port'?"
    assert error("[auth]\nauth_timeut_ms = 1") == (
        "config.toml: [auth]: unknown key 'auth_timeut_ms'; did you mean 'auth_timeout_ms'?"
    )
    assert error("[hlc]\nzzz = 1") == (
        "config.toml: [hlc]: unknown key 'zzz' (valid keys: max_drift_ms, strict)"
    )
    assert error("sections = {}").startswith("config.toml: unknown key 'sections'")
    policy = "[[policies]]\nrole='U'\nmap_name_pattern='*'\nactions=['READ']\nfields=['a']"
    assert error(policy).startswith("config.toml: [[policies]] #1: unknown key 'fields'")


def test_the_source_name_and_invalid_toml() -> None:
    assert error("port = 0.5", toml_source="/etc/topgun.toml") == (
        "/etc/topgun.toml: port: expected int, got 0.5"
    )
    assert error("port = ").startswith("config.toml: invalid TOML: ")


def test_environment_errors_name_the_variable() -> None:
    assert error(environ={"TOPGUN_PORT": "abc"}) == "TOPGUN_PORT: expected int, got 'abc'"
    assert error(environ={"TOPGUN_PORT": "-1"}) == "TOPGUN_PORT: expected int >= 0, got '-1'"
    assert error(environ={"TOPGUN_HLC_STRICT": "maybe"}) == (
        "TOPGUN_HLC_STRICT: expected bool, got 'maybe'"
    )
    assert error(environ={"TOPGUN_POLICIES": "[{"}).startswith("TOPGUN_POLICIES: expected JSON: ")
    bad_policy = '[{"role": "U", "map_name_pattern": "*", "actions": ["NOPE"]}]'
    assert error(environ={"TOPGUN_POLICIES": bad_policy}) == (
        "TOPGUN_POLICIES [0].actions[0]: expected one of ALL, PUT, READ, REMOVE, got 'NOPE'"
    )


def test_override_errors_name_the_flag() -> None:
    assert error(overrides={"port": "x"}) == "--port: expected int, got 'x'"
    assert error(overrides={"coalescing.max_batch_size": 0}) == (
        "coalescing.max_batch_size: expected int >= 1, got 0"
    )
    assert error(overrides={"prt": 1}) == "override 'prt': unknown key 'prt'; did you mean 'port'?"


def test_errors_across_layers_say_which_layers_set_the_keys() -> None:
    message = error(
        f"[auth]\njwt_secret = '{SECRET}'", environ={"TOPGUN_AUTH_JWT_PUBLIC_KEY": "/key.pem"}
    )
    assert message == (
        "configuration: [auth]: jwt_secret and jwt_public_key are both set; configure one of "
        "them (set by [auth] jwt_secret (config.toml), TOPGUN_AUTH_JWT_PUBLIC_KEY (environment))"
    )
    assert SECRET not in message


def test_unknown_topgun_variables_warn_and_others_are_ignored() -> None:
    with pytest.warns(ConfigWarning, match=r"TOPGUN_AUTH_JWT_SECRT is not a topgun setting "):
        load_config(environ={"TOPGUN_AUTH_JWT_SECRT": "x"})
    with pytest.warns(ConfigWarning, match=r"did you mean TOPGUN_AUTH_JWT_SECRET\?"):
        load_config(environ={"TOPGUN_AUTH_JWT_SECRT": "x"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = load_config(
            environ={
                "TOPGUN_CONFIG": "x.toml",
                "TOPGUN_LOAD_PLUGINS": "",
                "TOPGUN_DISABLE_PLUGINS": "a",
                "TOPGUN_TRACE_PLUGINS": "1",
                "TOPGUN_REQUIRE_SERVICES": "1",
                "HOME": "/root",
            }
        )
    assert config == ServerConfig()


# --- secrets -------------------------------------------------------------------------------


def test_secrets_never_show_in_reprs_or_errors() -> None:
    config = load_config(environ={"TOPGUN_AUTH_JWT_SECRET": SECRET})
    assert config.auth.jwt_secret is not None
    assert config.auth.jwt_secret.reveal() == SECRET
    for text in (repr(config), str(config), repr(config.auth), str(config.auth.jwt_secret)):
        assert SECRET not in text
        assert "**********" in text
    message = error("[auth]\njwt_secret = 42")
    assert message == "config.toml: [auth] jwt_secret: expected str, got '**********'"


def test_secret_equality_and_type() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert len({Secret("a"), Secret("a")}) == 1
    with pytest.raises(TypeError, match="Secret holds a str"):
        Secret(b"x")  # type: ignore[arg-type]
    assert error("[auth]\njwt_secret = ''") == "config.toml: [auth]: jwt_secret is empty"


# --- structs built in code -----------------------------------------------------------------


def test_combinations_are_checked_when_structs_are_built_in_code() -> None:
    with pytest.raises(ValueError, match="both set"):
        AuthConfig(jwt_secret=Secret(SECRET), jwt_public_key="k.pem")
    with pytest.raises(ValueError, match="go together"):
        TLSConfig(key_file=Path("key.pem"))
    assert TLSConfig(cert_file=Path("c.pem"), key_file=Path("k.pem")).enabled


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            "search_provider = 'bm25'\nsearch_providers = ['bm25', 'votes']",
            "set search_provider or search_providers, not both",
        ),
        (
            "search_providers = ['bm25', 'bm25']",
            "search_providers names a provider twice: ['bm25']",
        ),
        (
            "search_providers = ['bm25', 'votes']\nsearch_weights = { vector = 1.0 }",
            "search_weights names providers not in search_providers: ['vector']",
        ),
        ("search_weights = { bm25 = inf }", "search_weights must be finite: ['bm25']"),
        ("search_weights = { bm25 = -1.0 }", "search_weights"),
    ],
)
def test_search_provider_errors_name_the_key(options: str, message: str) -> None:
    assert message in error(f"[maps.articles]\nsearch_fields = ['title']\n{options}")


def test_search_providers_and_weights() -> None:
    maps = load_config(
        "[maps.one]\nsearch_provider = 'votes'\n"
        "[maps.two]\nsearch_providers = ['bm25', 'votes']\nsearch_weights = { votes = 0.5 }"
    ).maps
    assert (MapOptions().providers, MapOptions().provider_weights) == (("bm25",), (1.0,))
    assert maps["one"].providers == ("votes",)
    assert (maps["two"].providers, maps["two"].provider_weights) == (("bm25", "votes"), (1.0, 0.5))


def test_validate_config_applies_the_loader_constraints() -> None:
    good = ServerConfig(port=0, auth=AuthConfig(jwt_secret=Secret(SECRET)), node_id="n-1")
    assert validate_config(good) is good
    with pytest.raises(
        ConfigError, match=r"^ServerConfig: port: expected int <= 65535, got 70000$"
    ):
        validate_config(ServerConfig(port=70000))
    with pytest.raises(ConfigError, match=r"^ServerConfig: node_id: expected str matching"):
        validate_config(ServerConfig(node_id="Has Spaces"))


# --- plugin sections -----------------------------------------------------------------------


class VectorSection(msgspec.Struct, frozen=True):
    model: str = "mini"
    dimensions: int = 384
    api_key: Secret | None = None


class RequiredSection(msgspec.Struct):
    endpoint: str


class SectionsPlugin:
    @hookimpl
    def register_config_sections(self, register: Any) -> None:
        register("vector", VectorSection)


def sections_pm(*plugins: object) -> TopgunPluginManager:
    pm = make_plugin_manager(entry_points=(), environ={})
    for index, plugin in enumerate(plugins):
        pm.register(plugin, name=f"plugin-{index}")
    return pm


def test_plugin_sections_come_from_the_hook_and_load_like_core_keys() -> None:
    sections = config_sections(sections_pm(SectionsPlugin()))
    # `write_behind` is the built-in write-behind wrapper's section.
    assert sections == {"vector": VectorSection, "write_behind": WriteBehindConfig}
    config = load_config(
        "[vector]\nmodel = 'large'\n",
        environ={"TOPGUN_VECTOR_DIMENSIONS": "768", "TOPGUN_VECTOR_API_KEY": SECRET},
        sections=sections,
    )
    assert config.section("vector") == VectorSection("large", 768, Secret(SECRET))
    assert SECRET not in repr(config)
    assert load_config(sections=sections).section("vector") == VectorSection()
    assert environment_variables(sections)["TOPGUN_VECTOR_MODEL"] == ("vector", "model")
    with pytest.raises(
        KeyError, match=r"no configuration section 'audit' \(registered: vector, write_behind\)"
    ):
        config.section("audit")


def test_plugin_section_errors_name_the_section_key() -> None:
    sections = {"vector": VectorSection, "remote": RequiredSection}
    required = "[remote]\nendpoint = 'x'\n"
    assert error(required + "[vector]\nmodl = 'x'", sections=sections) == (
        "config.toml: [vector] modl: unknown key 'modl'; did you mean 'model'?"
    )
    assert error(required + "[vector]\ndimensions = 'x'", sections=sections) == (
        "config.toml: [vector] dimensions: expected int, got 'x'"
    )
    assert error("vector = 1\n" + required, sections=sections) == (
        "config.toml: [vector]: expected a table"
    )
    assert error(environ={"TOPGUN_VECTOR_DIMENSIONS": "x"}, sections=sections) == (
        "TOPGUN_VECTOR_DIMENSIONS: expected int, got 'x'"
    )
    assert error(sections=sections) == ("configuration: [remote]: missing required key 'endpoint'")
    assert error("[vector]\napi_key = 1\n" + required, sections=sections) == (
        "config.toml: [vector] api_key: expected str, got '**********'"
    )


@pytest.mark.parametrize(
    ("name", "section", "message"),
    [
        ("auth", VectorSection, "names are lower-case identifiers other than host, port"),
        ("Vector", VectorSection, "names are lower-case identifiers"),
        ("vector", dict, "sections are msgspec.Struct subclasses"),
    ],
)
def test_bad_plugin_sections_are_plugin_errors_naming_the_plugin(
    name: str, section: Any, message: str
) -> None:
    class Plugin:
        @hookimpl
        def register_config_sections(self, register: Any) -> None:
            register(name, section)

    with pytest.raises(PluginError, match=rf"plugin plugin-0 .*{re.escape(message)}"):
        config_sections(sections_pm(Plugin()))


def test_section_names_are_checked_by_load_config_too() -> None:
    assert error(sections={"port": VectorSection}) == (
        "invalid plugin configuration section name 'port'"
    )
    clash = {"auth_jwt": msgspec.defstruct("Clash", [("secret", str)])}
    assert error(sections=clash) == (
        "the configuration keys auth_jwt.secret and auth.jwt_secret both map to "
        "TOPGUN_AUTH_JWT_SECRET"
    )
    reserved = {"load": msgspec.defstruct("Load", [("plugins", str)])}
    assert error(sections=reserved) == (
        "the configuration key load.plugins maps to TOPGUN_LOAD_PLUGINS, which topgun reads "
        "for another purpose"
    )


# --- reading the file, and the flags -------------------------------------------------------


def test_read_config_reads_the_file_named_by_the_flag_or_the_environment(tmp_path: Path) -> None:
    flag_file = tmp_path / "flag.toml"
    flag_file.write_text("port = 1111\n")
    env_file = tmp_path / "env.toml"
    env_file.write_text("port = 2222\n")
    environ = {"TOPGUN_CONFIG": str(env_file)}
    assert read_config(flag_file, environ=environ).port == 1111
    assert read_config(environ=environ).port == 2222
    assert read_config(environ={}).port == 8080
    assert read_config(environ=environ, overrides={"port": 3}).port == 3
    env_file.write_text("port = 'x'\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(env_file))}: port: expected int"):
        read_config(environ=environ)


def test_read_config_reports_a_missing_file_and_who_named_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"^--config: cannot read .*nope\.toml: No such file"):
        read_config(missing, environ={})
    with pytest.raises(ConfigError, match=r"^TOPGUN_CONFIG: cannot read .*nope\.toml"):
        read_config(environ={"TOPGUN_CONFIG": str(missing)})


def test_config_options_turn_flags_into_overrides(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    @click.command()
    @config_options
    @click.option("--verbose", is_flag=True)
    def serve(config_file: Path | None, config_overrides: dict[str, Any], verbose: bool) -> None:
        seen.update(file=config_file, overrides=config_overrides, verbose=verbose)

    runner = CliRunner()
    args = ["--port", "9000", "--jwt-secret", SECRET, "--tls-cert", "c.pem", "--verbose"]
    result = runner.invoke(serve, [*args, "--config", str(tmp_path / "t.toml")])
    assert result.exit_code == 0, result.output
    assert seen == {
        "file": tmp_path / "t.toml",
        "overrides": {"port": 9000, "auth.jwt_secret": SECRET, "tls.cert_file": "c.pem"},
        "verbose": True,
    }
    assert runner.invoke(serve, []).exit_code == 0
    assert seen["overrides"] == {}
    assert seen["file"] is None
    assert runner.invoke(serve, ["--port", "x"]).exit_code == 2
    config = load_config(
        overrides={
            "port": 9000,
            "auth.jwt_secret": SECRET,
            "tls.cert_file": "c",
            "tls.key_file": "k",
        }
    )
    assert config.tls.enabled


def test_every_flag_names_a_real_key() -> None:
    keys = set(environment_variables().values())
    assert [flag.key for flag in CLI_FLAGS if tuple(flag.key.split(".")) not in keys] == []


def test_docs_list_every_variable_and_flag() -> None:
    """docs/server.md's configuration table names every TOML key's variable and every flag."""
    text = (ROOT / "docs" / "server.md").read_text()
    missing = [name for name in environment_variables() if f"`{name}`" not in text]
    missing += [flag.flag for flag in CLI_FLAGS if f"`{flag.flag}`" not in text]
    assert not missing, f"docs/server.md does not document: {', '.join(missing)}"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[maps.users]\nfoo = 1\n",
            r"^config\.toml: \[maps\.users\]: unknown key 'foo' \(valid keys: indexes,",
        ),
        (
            "[maps.a]\n[maps.b]\nsearch_fields = [1]\n",
            r"^config\.toml: \[maps\.b\] search_fields\[0\]: expected str, got 1$",
        ),
        (
            '[maps.users]\nindexes = ["bogus:x"]\n',
            r"^config\.toml: \[maps\.users\]: unknown index kind 'bogus'",
        ),
    ],
)
def test_errors_inside_a_map_table_name_the_map(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(toml, environ={})
