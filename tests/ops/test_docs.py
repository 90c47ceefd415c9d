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
from training.params import load_params

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "router.yaml"
PARAMS = REPO / "params.yaml"


def _inputs(config: Path = CONFIG) -> DocInputs:
    return DocInputs(config=load_config(config), params=load_params(PARAMS))


def _texts(root: Path = REPO) -> dict[str, str]:
    return {str(path): (root / path).read_text(encoding="utf-8") for path in document_paths()}


def _check(config: Path, root: Path = REPO) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["docs", "render", "--check", "--config", str(config),
                                      "--params", str(PARAMS), "--root", str(root)])
    return result.exit_code, result.output


def _changed_config(tmp_path: Path, change: str) -> Path:
    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    if change == "escalate":
        data["gate"]["escalate_threshold"] = 0.6
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
