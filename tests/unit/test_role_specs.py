"""The Ansible roles' defaults/main.yml against meta/argument_specs.yml (the same variables,
the same defaults), and the brushtail role's config variables against the config model."""

from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from brushtaild.config.model import Config, FastPath, LogLevel, XdpMode

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"
ROLE_NAMES = sorted(path.name for path in ROLES.iterdir() if (path / "defaults").is_dir())


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def options(role: str) -> dict[str, Any]:
    specs = load(ROLES / role / "meta" / "argument_specs.yml")
    result: dict[str, Any] = specs["argument_specs"]["main"]["options"]
    return result


def is_template(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def test_the_roles_are_found() -> None:
    assert {"brushtail", "brushtail_pki"} <= set(ROLE_NAMES)


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_defaults_and_argument_specs_name_the_same_variables(role: str) -> None:
    defaults = load(ROLES / role / "defaults" / "main.yml")
    specs = options(role)
    required = {name for name, spec in specs.items() if spec.get("required")}
    assert set(defaults) == set(specs) - required
    assert not required & set(defaults), "a required variable has a default"


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_defaults_and_argument_specs_agree_on_each_default(role: str) -> None:
    defaults = load(ROLES / role / "defaults" / "main.yml")
    for name, value in defaults.items():
        spec = options(role)[name]
        if "default" in spec:
            assert spec["default"] == value, name
        else:
            # Derived from other variables (gossip peers, subject alt names): too long to
            # repeat in the spec, whose description says "derived".
            assert is_template(value), f"{name} has no default in argument_specs.yml"
        if "choices" in spec:
            assert value in spec["choices"], name


def _model_default(cls: type, name: str) -> object:
    field = next(f for f in fields(cls) if f.name == name)
    assert field.default is not MISSING
    return field.default


def test_fastpath_options_are_the_model_with_its_defaults() -> None:
    spec = options("brushtail")["brushtail_fastpath"]["options"]
    assert list(spec) == [f.name for f in fields(FastPath)]
    for name, option in spec.items():
        default = _model_default(FastPath, name)
        assert option["default"] == (str(default) if isinstance(default, Path) else default)
    assert spec["xdp_mode"]["choices"] == list(XdpMode)


def test_config_variables_default_as_the_model_does() -> None:
    spec = options("brushtail")
    for name in ("state_dir", "offer_hold", "decline_hold", "log_level"):
        default = _model_default(Config, name)
        expected = str(default) if isinstance(default, Path) else default
        assert spec[f"brushtail_{name}"]["default"] == expected, name
    listen = _model_default(Config, "metrics_listen")
    assert isinstance(listen, tuple)
    host, port = listen
    assert spec["brushtail_metrics_listen"]["default"] == f"{host}:{port}"
    assert spec["brushtail_log_level"]["choices"] == list(LogLevel)
    assert load(ROLES / "brushtail" / "vars" / "main.yml")["__brushtail_log_levels"] == list(
        LogLevel
    )
