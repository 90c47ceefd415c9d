from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from router.cli import app
from router.config import RouterConfig, load_config
from router.errors import ConfigError
from router.tiers import TIERS
from tests.conftest import CONFIG_PATH, tier_router_exe


def test_shipped_config_maps_tiers_as_designed(router_config: RouterConfig) -> None:
    served = {tier: {d.served_model for d in router_config.deployments(tier)} for tier in TIERS}
    assert served == {"simple": {"mistralai/mixtral-8x7b-chat"},
                      "medium": {"zero-one-ai/Yi-34B-Chat"},
                      "critical": {"gpt-4-1106-preview"}}
    for tier in TIERS:
        providers = {d.provider for d in router_config.deployments(tier)}
        assert len(providers) >= 2, f"{tier} needs two providers for same-tier fallback"
    gate = router_config.gate
    # The operating point's defaults (a model's fitted point overrides them): lambda 50
    # probability per USD, route from 0.8, escalate below 0.5, an answer scored below 0.5 fails.
    assert (gate.price_weight, gate.escalate_threshold, gate.trust_threshold,
            gate.score_threshold) == (50.0, 0.50, 0.80, 0.5)
    assert "score_threshold" not in router_config.cascade.model_dump()  # moved to the gate
    rules = {rule.domain: rule.tier for rule in router_config.overrides.rules}
    assert rules == {"finance": "critical", "legal": "critical", "medical": "critical"}


def test_model_list_is_litellm_format_with_prices(router_config: RouterConfig) -> None:
    entry = router_config.litellm_model_list()[-1]
    assert entry["model_name"] == "critical"
    assert entry["litellm_params"]["model"] == "openai/gpt-4-1106-preview"
    assert entry["litellm_params"]["input_cost_per_token"] == pytest.approx(1e-5)
    assert entry["litellm_params"]["output_cost_per_token"] == pytest.approx(3e-5)


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _shipped() -> dict:
    return yaml.safe_load(CONFIG_PATH.read_text())


@pytest.mark.parametrize(("change", "field", "words"), [
    (lambda d: d["gate"].update(trust_treshold=0.9), "gate.trust_treshold", "unknown field"),
    (lambda d: d["gate"].update(trust_threshold=1.5), "gate.trust_threshold", "less than or equal"),
    (lambda d: d["gate"].update(escalate_threshold=0.9), "gate", "must not exceed"),
    (lambda d: d["gate"].update(price_weight=-5), "gate.price_weight", "greater than or equal"),
    (lambda d: d["gate"].update(price_weight=float("inf")), "gate.price_weight", "finite number"),
    (lambda d: d["gate"].update(score_threshold=-0.1), "gate.score_threshold",
     "greater than or equal"),
    (lambda d: d["cascade"].update(score_threshold=0.5), "cascade.score_threshold",
     "unknown field"),
    (lambda d: d["model_list"][2].update(model_name="cheap"), "model_list[2].model_name",
     "'simple', 'medium' or 'critical'"),
    (lambda d: d["model_list"][0]["litellm_params"].pop("input_cost_per_token"),
     "model_list[0].litellm_params.input_cost_per_token", "Field required"),
    (lambda d: d["model_list"][1]["litellm_params"].update(api_base="127.0.0.1:8900"),
     "model_list[1].litellm_params.api_base", "http(s) URL"),
    (lambda d: d["overrides"]["rules"][0].update(patterns=["(unclosed"]),
     "overrides.rules[0].patterns", "not a valid regular expression"),
    (lambda d: d["cascade"].update(max_calls=0), "cascade.max_calls", "greater than or equal"),
    (lambda d: d["decision_log"].update(url="decisions.sqlite"), "decision_log.url",
     "SQLAlchemy URL"),
    (lambda d: d.update(model_list=[e for e in d["model_list"] if e["model_name"] != "medium"]),
     "(top level)", "no deployment for tier(s) ['medium']"),
])
def test_bad_config_names_file_field_and_problem(tmp_path: Path, change, field: str,
                                                 words: str) -> None:
    data = _shipped()
    change(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert f"{path}: {field}: " in message
    assert words in message


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    data = _shipped()
    data["gate"]["trust_treshold"] = 0.9
    data["cache"]["ttl_s"] = -1
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, data))
    assert [field for field, _ in caught.value.problems] == ["gate.trust_treshold", "cache.ttl_s"]


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("gate:\n  trust_threshold: [0.8\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+, column \d+: invalid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)


def test_check_config_command(tmp_path: Path) -> None:
    """The installed console script: exit 0 on the shipped config, 1 naming file and field."""
    ok = subprocess.run([*tier_router_exe(), "check-config", str(CONFIG_PATH)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "ok (6 deployments over 3 tiers)" in ok.stdout

    data = _shipped()
    data["cache"]["similarity_treshold"] = 0.9
    bad = _write(tmp_path, data)
    result = subprocess.run([*tier_router_exe(), "check-config", str(bad)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert f"{bad}: cache.similarity_treshold: unknown field" in result.stderr


def test_check_config_in_process_for_a_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["check-config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "nope.yaml: cannot read" in result.output
