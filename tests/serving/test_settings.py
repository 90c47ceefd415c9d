"""Service settings from the environment, API keys at rest, and the Bento's bundled models."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.errors import ConfigError
from serving.settings import ServiceSettings, bundled_models, hash_key, tenant_for


def test_defaults_and_overrides(tmp_path: Path) -> None:
    plain = ServiceSettings.from_env({}, cwd=tmp_path)
    assert plain.classifier == "models:/tier-classifier@champion" and plain.api_keys == {}
    keys = tmp_path / "keys"
    keys.write_text(f"# comment\n{hash_key('sk-a')} acme  # trailing\n\n")
    settings = ServiceSettings.from_env({
        "ROUTER_CLASSIFIER": "fixed:simple", "ROUTER_SCORER": "none",
        "ROUTER_RELOAD_INTERVAL_S": "0", "ROUTER_API_KEYS": str(keys),
        "ROUTER_DEMO_KEY": "sk-demo"}, cwd=tmp_path)
    assert (settings.classifier, settings.scorer, settings.reload_interval_s) == (
        "fixed:simple", None, 0.0)
    assert tenant_for("sk-a", settings.api_keys) == "acme"
    assert tenant_for("sk-demo", settings.api_keys) == "demo"
    assert tenant_for("sk-b", settings.api_keys) is None and tenant_for(None, {}) is None
    assert "sk-a" not in str(settings.model_dump())  # only hashes are kept


def test_bad_values_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ROUTER_RELOAD_INTERVAL_S"):
        ServiceSettings.from_env({"ROUTER_RELOAD_INTERVAL_S": "soon"}, cwd=tmp_path)
    keys = tmp_path / "keys"
    keys.write_text("sk-plain-key acme\n")
    with pytest.raises(ConfigError, match="line 1: expected '<sha256 hex of the key> <tenant>'"):
        ServiceSettings.from_env({"ROUTER_API_KEYS": str(keys)}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="cannot read"):
        ServiceSettings.from_env({"ROUTER_API_KEYS": str(tmp_path / "missing")}, cwd=tmp_path)


def test_a_built_bento_serves_the_models_it_carries(tmp_path: Path) -> None:
    src = tmp_path / "bento" / "src"
    (src / "var" / "bento-models" / "classifier").mkdir(parents=True)
    assert bundled_models(src) is None  # no bento.yaml: a checkout, not a Bento
    (tmp_path / "bento" / "bento.yaml").write_text("service: x\n")
    assert bundled_models(src) == src / "var" / "bento-models"
    settings = ServiceSettings.from_env({}, cwd=src)
    assert settings.classifier == f"path:{src / 'var' / 'bento-models' / 'classifier'}"
    assert settings.scorer is None  # none was exported
    assert ServiceSettings.from_env({"ROUTER_CLASSIFIER": "fixed:critical"},
                                    cwd=src).classifier == "fixed:critical"
