"""The config-rendered documents: they match the committed config, drift is reported, the proxy
template is LiteLLM's config of the router's own model list, and broken markers are errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ops.docs import (
    DocInputs,
    MarkerError,
    check_documents,
    document_paths,
    find_parts,
    render_documents,
    splice,
)
from router.cli import app
from router.config import load_config
from training.params import Params, load_params

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "router.yaml"
PARAMS = REPO / "params.yaml"


def _inputs(config: Path = CONFIG, params: Path = PARAMS) -> DocInputs:
    return DocInputs(config=load_config(config), params=load_params(params))


def _texts(root: Path = REPO) -> dict[str, str]:
    return {str(path): (root / path).read_text(encoding="utf-8") for path in document_paths()}


def _check(config: Path, root: Path = REPO, params: Path = PARAMS) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["docs", "render", "--check", "--config", str(config),
                                      "--params", str(params), "--root", str(root)])
    return result.exit_code, result.output


def _part(text: str, name: str) -> str:
    """The lines between a Markdown document's markers of rendered part ``name``."""
    return text.split(f"<!-- BEGIN rendered:{name} -->\n", 1)[1].split(
        f"<!-- END rendered:{name} -->", 1)[0]


def _table_cells(part: str) -> dict[str, list[str]]:
    """A rendered Markdown table's rows: first cell (backticks stripped) -> the other cells."""
    rows = {}
    for line in part.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def _changed_config(tmp_path: Path, change: str) -> Path:
    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    if change == "escalate":
        data["gate"]["escalate_threshold"] = 0.6
    elif change == "score_threshold":
        data["gate"]["score_threshold"] = 0.65
    elif change == "ab_price_weight":
        data["ab"]["variants"][0]["gate"]["price_weight"] = 250.0
    elif change == "deployment":
        extra = {"model_name": "medium",
                 "litellm_params": {"model": "openai/zero-one-ai/Yi-34B-Chat",
                                    "api_base": "http://127.0.0.1:8900/p/anyscale/v1",
                                    "input_cost_per_token": 7.0e-7,
                                    "output_cost_per_token": 7.0e-7},
                 "model_info": {"id": "anyscale/yi-34b-chat"}}
        data["model_list"].insert(4, extra)
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_committed_documents_match_the_config_and_the_code() -> None:
    drifts = check_documents(_texts(), _inputs())
    assert not drifts, ("rendered parts drifted (run `tier-router docs render`): "
                        + ", ".join(f"{d.path}:{d.part}" for d in drifts))
    code, output = _check(CONFIG)
    assert code == 0, output
    assert "every rendered part matches" in output


@pytest.mark.parametrize(("change", "drifted", "kept"), [
    ("escalate", {"docs/blueprint.md: rendered:overrides"},
     {"rendered:tiers", "rendered:litellm-proxy"}),
    # score_threshold is the operating point's now (gate), no longer the cascade's
    ("score_threshold", {"docs/blueprint.md: rendered:overrides"},
     {"rendered:cascade-cache", "rendered:ab"}),
    ("ab_price_weight", {"docs/rollout-checklist.md: rendered:ab"},
     {"rendered:overrides", "rendered:tiers"}),
    ("deployment", {"docs/blueprint.md: rendered:tiers", "docs/blueprint.md: rendered:fallbacks",
                    "configs/templates/litellm_proxy.yaml: rendered:litellm-proxy"},
     {"rendered:overrides", "rendered:ab"}),
])
def test_check_names_each_drifted_part_and_changes_nothing(
        tmp_path: Path, change: str, drifted: set[str], kept: set[str]) -> None:
    config = _changed_config(tmp_path, change)
    before = _texts()
    code, output = _check(config)
    assert code == 1, output
    for name in drifted:
        assert name in output
    for name in kept:
        assert f"{name} differs" not in output
    assert _texts() == before  # --check writes nothing


def _changed_params(tmp_path: Path, section: str, field: str, value: object) -> Path:
    data = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    data[section][field] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(("section", "field", "value", "drifted"), [
    ("calibrate", "quality_target", 0.95,
     {"rendered:calibration-params", "rendered:calibration-commands"}),
    ("calibrate", "backend", "transformer",
     {"rendered:calibration-params", "rendered:calibration-commands"}),
    ("calibrate", "score_grid", [0.0, 0.5], {"rendered:calibration-params"}),
    ("harvest", "min_log_rows", 100, {"docs/rollout-checklist.md: rendered:harvest"}),
])
def test_a_params_change_drifts_the_parts_rendered_from_it(
        tmp_path: Path, section: str, field: str, value: object, drifted: set[str]) -> None:
    params = _changed_params(tmp_path, section, field, value)
    code, output = _check(CONFIG, params=params)
    assert code == 1, output
    for name in drifted:
        assert name in output
    reported = {line.split(" differs")[0].split(": ", 1)[1] for line in output.splitlines()
                if " differs from " in line}
    assert reported == {name.split(": ")[-1] for name in drifted}


def test_the_calibration_template_documents_the_real_knobs() -> None:
    text = (REPO / "configs" / "templates" / "calibration.md").read_text(encoding="utf-8")
    table = _table_cells(_part(text, "calibration-params"))
    data = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    for knob in ("calibrate.backend", "calibrate.objective", "calibrate.quality_target",
                 "calibrate.cost_budget", "calibrate.max_escalation", "calibrate.score_grid",
                 "calibrate.escalation_grid", "calibrate.price_weights", "scorer.encoder"):
        section, field = knob.split(".")
        assert knob in table, knob
        assert yaml.safe_load(table[knob][0].strip("`")) == data[section][field], knob
    assert table["calibrate.objective"][1] == "`min_cost`, `max_quality`"
    for gone in ("calibrate.method", "calibrate.grid_step", "scorer.objective",
                 "scorer.gain_target"):
        assert gone not in text, gone
    # Every command names a param that exists and a value it accepts.
    commands = _part(text, "calibration-commands")
    settings = [word for line in commands.splitlines() if line.startswith("dvc exp run")
                for word in line.split()[4::2]]
    assert "calibrate.quality_target=0.97" in settings
    assert "calibrate.backend=transformer" in settings  # the backend not served now
    for setting in settings:
        key, _, value = setting.partition("=")
        section, field = key.split(".")
        changed = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
        assert field in changed[section], setting
        changed[section][field] = yaml.safe_load(value)
        Params.model_validate(changed)  # raises on a value the param does not accept


def test_the_gate_table_holds_every_knob_of_the_operating_point() -> None:
    text = (REPO / "docs" / "blueprint.md").read_text(encoding="utf-8")
    table = _table_cells(_part(text, "overrides").split("(`gate`)", 1)[1])
    written = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["gate"]
    assert set(table) == {"price_weight", "escalate_threshold", "trust_threshold",
                          "score_threshold", "escalation_weight"}
    for knob, value in written.items():
        assert float(table[knob][0].strip("`")) == value, knob
    cascade = _table_cells(_part(text, "cascade-cache").split("Semantic cache", 1)[0])
    assert "score_threshold" not in cascade and "max_calls" in cascade


def test_render_rewrites_only_the_rendered_parts(tmp_path: Path) -> None:
    for path in document_paths():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, tmp_path / path)
    config = _changed_config(tmp_path, "deployment")
    result = CliRunner().invoke(app, ["docs", "render", "--config", str(config),
                                      "--params", str(PARAMS), "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert _check(config, tmp_path)[0] == 0
    blueprint = (tmp_path / "docs" / "blueprint.md").read_text(encoding="utf-8")
    assert "`anyscale/yi-34b-chat`" in blueprint
    # The prose around the parts is untouched: rendering the original config restores the file.
    restored = render_documents(_texts(tmp_path), _inputs())
    assert restored == _texts()


def test_the_litellm_proxy_template_is_the_routers_model_list() -> None:
    template = yaml.safe_load(
        (REPO / "configs" / "templates" / "litellm_proxy.yaml").read_text(encoding="utf-8"))
    config = load_config(CONFIG)
    assert template["model_list"] == config.litellm_model_list()
    assert template["router_settings"] == config.router_settings.model_dump()
    assert template["general_settings"]["master_key"].startswith("os.environ/")


def test_the_vllm_script_is_valid_shell() -> None:
    script = REPO / "configs" / "templates" / "vllm_serve.sh"
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("a\n<!-- BEGIN rendered:tiers -->\nold\n", "doc.md:2: BEGIN rendered:tiers has no END"),
    ("<!-- END rendered:tiers -->\n", "without a BEGIN"),
    ("<!-- BEGIN rendered:tiers -->\n<!-- BEGIN rendered:ab -->\n<!-- END rendered:ab -->\n"
     "<!-- END rendered:tiers -->\n", "inside rendered:tiers"),
    ("<!-- BEGIN rendered:tiers -->\n<!-- END rendered:ab -->\n", "closes rendered:tiers"),
    ("<!-- BEGIN rendered:tiers\n<!-- END rendered:tiers -->\n", "malformed marker"),
    ("<!-- BEGIN rendered:tiers -->\n<!-- END rendered:tiers -->\n"
     "<!-- BEGIN rendered:tiers -->\n<!-- END rendered:tiers -->\n", "appears twice"),
])
def test_malformed_markers_are_errors(text: str, message: str) -> None:
    with pytest.raises(MarkerError, match=message):
        find_parts(text, source="doc.md", style="html")


def test_unknown_or_missing_parts_are_errors() -> None:
    text = "<!-- BEGIN rendered:tiers -->\n<!-- END rendered:tiers -->\n"
    with pytest.raises(MarkerError, match=r"unknown rendered part\(s\) \['tiers'\]"):
        splice(text, {"ab": "x"}, source="doc.md", style="html")
    with pytest.raises(MarkerError, match=r"part\(s\) \['ab'\] missing"):
        splice(text, {"tiers": "x", "ab": "y"}, source="doc.md", style="html")
    assert splice(text, {"tiers": "new"}, source="doc.md", style="html") == (
        "<!-- BEGIN rendered:tiers -->\nnew\n<!-- END rendered:tiers -->\n")


def test_a_begin_without_end_fails_the_command(tmp_path: Path) -> None:
    for path in document_paths():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, tmp_path / path)
    blueprint = tmp_path / "docs" / "blueprint.md"
    blueprint.write_text(blueprint.read_text(encoding="utf-8").replace(
        "<!-- END rendered:tiers -->\n", "", 1), encoding="utf-8")
    for extra in ([], ["--check"]):
        result = CliRunner().invoke(app, ["docs", "render", *extra, "--config", str(CONFIG),
                                          "--params", str(PARAMS), "--root", str(tmp_path)])
        assert result.exit_code == 1
        assert "docs/blueprint.md" in result.output and "rendered:tiers" in result.output
