"""Layered configuration: defaults < file < environment < flags, for coordinator and node; clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from phage.client.cli_roles import COORDINATOR, NODE, reference_markdown
from phage.config import ConfigError, Role, config_path, resolve
from phage.coordinator.settings import CoordinatorSettings
from phage.node.config import NodeConfig

ROOT = Path(__file__).resolve().parents[2]


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "phage.toml"
    path.write_text(text)
    return path


LAYERS = [
    # (file, environment, flag) → which wins
    ((None, None, None), "default"),
    (("11", None, None), "file"),
    (("11", "12", None), "environment"),
    (("11", "12", "13"), "command line"),
    ((None, None, "13"), "command line"),
    ((None, "12", None), "environment"),
    (("11", None, "13"), "command line"),
]


@pytest.mark.parametrize(
    ("role", "key", "variable", "default"),
    [
        (COORDINATOR.role, "http_port", "PHAGE_HTTP_PORT", 8080),
        (COORDINATOR.role, "min_quorum", "PHAGE_MIN_QUORUM", 2),
        (NODE.role, "max_concurrency", "PHAGE_NODE_MAX_CONCURRENCY", 4),
    ],
)
@pytest.mark.parametrize(("layers", "winner"), LAYERS)
def test_precedence_flags_over_environment_over_file_over_defaults(
    tmp_path: Path,
    role: Role,
    key: str,
    variable: str,
    default: int,
    layers: tuple[str | None, str | None, str | None],
    winner: str,
) -> None:
    file, env, flag = layers
    path = _file(tmp_path, f"[{role.name}]\n{key} = {file}\n" if file else "")
    got = resolve(role, flags={key: flag}, config=path, environ={variable: env} if env else {})
    expected = {"default": default, "file": 11, "environment": 12, "command line": 13}[winner]
    assert getattr(got.settings, key) == expected
    assert got.sources[key] == (f"{path} [{role.name}]" if winner == "file" else winner)
    # every other key stays at its default, from the default layer
    assert all(src == "default" for k, src in got.sources.items() if k != key)


def test_every_layer_at_once_each_key_from_its_own_layer(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        '[coordinator]\nmin_quorum = 3\nmax_workspace_bytes = "2MiB"\nhttp_port = 1\n'
        '[node]\nname = "from-file"\nmodel_memory_bytes = "1GiB"\n',
    )
    environ = {"PHAGE_HTTP_PORT": "2", "PHAGE_SPOT_CHECK": "0.5", "PHAGE_NODE_NAME": "from-env"}
    coord = resolve(COORDINATOR.role, flags={"http_port": "3"}, config=path, environ=environ)
    assert isinstance(coord.settings, CoordinatorSettings)
    s = coord.settings
    assert (s.min_quorum, s.max_workspace_bytes, s.http_port, s.spot_check) == (3, 2 * 2**20, 3, 0.5)
    assert coord.sources["spot_check"] == "environment" and coord.sources["http_port"] == "command line"
    node = resolve(NODE.role, flags={}, config=path, environ=environ)
    assert isinstance(node.settings, NodeConfig)
    assert node.settings.name == "from-env" and node.settings.model_memory_bytes == 2**30


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = _file(tmp_path, "[coordinator]\nhttp_prot = 8081\n")
    with pytest.raises(ConfigError) as err:
        resolve(COORDINATOR.role, flags={}, config=path, environ={})
    assert "unknown key 'http_prot' in [coordinator]" in err.value.message
    assert "did you mean 'http_port'" in err.value.message and err.value.field == "http_prot"


def test_unknown_table_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, "[coordinater]\nhttp_port = 1\n")
    with pytest.raises(ConfigError, match=r"unknown table or key 'coordinater'.*did you mean 'coordinator'"):
        resolve(COORDINATOR.role, flags={}, config=path, environ={})


def test_wrong_type_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = _file(tmp_path, '[node]\nmax_concurrency = "many"\n')
    with pytest.raises(ConfigError) as err:
        resolve(NODE.role, flags={}, config=path, environ={})
    msg = err.value.message
    assert (
        "max_concurrency" in msg
        and str(path) in msg
        and "'many'" in msg
        and err.value.field == "max_concurrency"
    )


def test_out_of_range_names_the_variable_or_flag() -> None:
    with pytest.raises(ConfigError, match=r"PHAGE_MIN_QUORUM \(from environment\).*less than or equal to 16"):
        resolve(COORDINATOR.role, flags={}, environ={"PHAGE_MIN_QUORUM": "99"})
    with pytest.raises(ConfigError, match=r"--heartbeat \(from command line\)"):
        resolve(NODE.role, flags={"heartbeat_interval_s": "-1"}, environ={})
    with pytest.raises(ConfigError, match=r"--admission \(from command line\).*'token'"):
        resolve(COORDINATOR.role, flags={"admission": "everyone"}, environ={})


def test_invalid_toml_and_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(COORDINATOR.role, flags={}, config=_file(tmp_path, "[coordinator\n"), environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        config_path(tmp_path / "nope.toml", {})


def test_default_location_and_phage_config(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    assert config_path(None, {"XDG_CONFIG_HOME": str(xdg)}) is None  # absent default: no file, no error
    (xdg / "phage").mkdir(parents=True)
    (xdg / "phage" / "phage.toml").write_text("[node]\nname = 'x'\n")
    assert config_path(None, {"XDG_CONFIG_HOME": str(xdg)}) == xdg / "phage" / "phage.toml"
    other = _file(tmp_path, "")
    assert config_path(None, {"XDG_CONFIG_HOME": str(xdg), "PHAGE_CONFIG": str(other)}) == other


def test_every_option_is_documented_and_the_reference_is_current() -> None:
    for model in (CoordinatorSettings, NodeConfig):
        undocumented = [k for k, f in model.model_fields.items() if not f.description]
        assert not undocumented, f"{model.__name__} fields without a docstring: {undocumented}"
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == reference_markdown(), "regenerate: phage config reference > docs/configuration.md"


def test_the_shipped_service_configuration_is_valid() -> None:
    """deploy/phage.toml parses for both roles, and the variables the units and guide name exist."""
    path = ROOT / "deploy" / "phage.toml"
    coord = resolve(COORDINATOR.role, flags={}, config=path, environ={})
    node = resolve(NODE.role, flags={}, config=path, environ={"PHAGE_JOIN_TOKEN": "t"})
    assert isinstance(coord.settings, CoordinatorSettings) and coord.settings.advertise_host
    assert isinstance(node.settings, NodeConfig) and node.settings.join_token == "t"
    units = "".join((ROOT / "deploy" / f"phage-{r}.service").read_text() for r in ("coordinator", "node"))
    guide = (ROOT / "deploy" / "README.md").read_text()
    for variable in re.findall(r"PHAGE_[A-Z_]+", units + guide):
        client = ("PHAGE_CONFIG", "PHAGE_URL", "PHAGE_API_KEY", "PHAGE_CA_CERT", "PHAGE_CA_FINGERPRINT")
        known = variable in client or any(
            variable in {role.env(k) for k in role.model.model_fields}
            for role in (COORDINATOR.role, NODE.role)
        )
        assert known, f"{variable} is not an option"


def test_a_table_option_from_the_environment_is_json(tmp_path: Path) -> None:
    aliases = '{"gpt-4o": ["qwen-72b", "standin-7b"]}'
    got = resolve(COORDINATOR.role, flags={}, config=None, environ={"PHAGE_CHAT_ALIASES": aliases})
    assert isinstance(got.settings, CoordinatorSettings)
    assert got.settings.chat_aliases == {"gpt-4o": ["qwen-72b", "standin-7b"]}
    with pytest.raises(ConfigError, match=r"PHAGE_CHAT_ALIASES.*not valid JSON") as bad:
        resolve(COORDINATOR.role, flags={}, config=None, environ={"PHAGE_CHAT_ALIASES": "{gpt-4o"})
    assert bad.value.field == "chat_aliases"
