"""``tier-router bench`` end to end on a small workload: the report's invariants hold, and its
``hybrid`` row is :func:`router.gate.replay` at the policy's point over the saved observations."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench.approaches import Observations
from router.config import load_config
from router.gate import config_point, replay
from tests.conftest import CONFIG_PATH, REPO, tier_router_exe


def _bench(classifier: Path, out: Path, name: str) -> dict:
    done = subprocess.run(
        [*tier_router_exe(), "bench", "--workload", "routerbench", "--out",
         str(out / name), "--plots", str(out / "plots"), "--config", str(CONFIG_PATH),
         "--classifier", str(classifier), "--scorer", "fixed:0.4", "--limit", "40",
         "--bootstrap", "50", "--fold-file", str(out / "no-fold.parquet"),
         "--observations", str(out / "obs.npz")],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / name).read_text())


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def report(tiny_bert_dir: Path, bench_dir: Path) -> dict:
    result = _bench(tiny_bert_dir, bench_dir, "bench.json")
    assert (bench_dir / "plots" / "bench.png").stat().st_size > 0
    assert (bench_dir / "obs.npz").exists()
    return result


def test_report_invariants(report: dict) -> None:
    approaches = report["approaches"]
    assert set(approaches) == {"frontier_only", "simple_only", "medium_only", "routing_only",
                               "cascade_only", "hybrid", "hybrid_no_medium", "random_mix",
                               "best_fixed_mix", "per_category_mix", "oracle"}
    oracle = approaches["oracle"]
    for name, row in approaches.items():
        assert set(row) >= {"cost_per_task", "p95_latency_ms", "quality", "quality_ci",
                            "escalation_rate", "frontier_call_share", "mean_calls"}
        assert oracle["quality"] >= row["quality"] - 1e-9, name
        low, high = row["quality_ci"]
        assert low <= row["quality"] <= high, name
    assert oracle["cost_per_task"] <= approaches["frontier_only"]["cost_per_task"]
    assert approaches["frontier_only"]["frontier_call_share"] == 1.0
    # random_mix and best_fixed_mix are priced at the hybrid's cost
    for name in ("random_mix", "best_fixed_mix"):
        assert approaches[name]["cost_per_task"] == pytest.approx(
            approaches["hybrid"]["cost_per_task"], rel=1e-6)
    # the tiny model stores no operating point: the config's defaults, never refit here
    assert report["point"]["source"] == "config" and report["threshold_source"] == "config"
    assert "fitted_on_validation" not in report.get("settings", {})


def test_the_hybrid_row_is_router_gate_replay_at_the_policy_point(report: dict,
                                                                   bench_dir: Path) -> None:
    config = load_config(CONFIG_PATH)
    obs = Observations.load(bench_dir / "obs.npz")
    assert obs.prices.min() > 0 and obs.allowed.dtype == bool
    assert ((obs.p >= 0) & (obs.p <= 1)).all()
    run = replay(obs.p, obs.prices, config_point(config.gate), obs.scores, obs.tier_map,
                 max_calls=config.cascade.max_calls, allowed=obs.allowed, forced=obs.forced)
    row = report["approaches"]["hybrid"]
    assert row["cost_per_task"] == pytest.approx(
        np.where(run.called, obs.cost, 0.0).sum(axis=1).mean())
    assert row["escalation_rate"] == pytest.approx(run.escalated.mean())


def test_every_curve_runs_from_the_cheapest_tier_to_frontier_only(report: dict) -> None:
    low, high = report["aiq"]["cost_range"]
    frontier = report["approaches"]["frontier_only"]
    assert high == pytest.approx(frontier["cost_per_task"])
    assert low == pytest.approx(report["approaches"]["simple_only"]["cost_per_task"])
    # no validation fold here: every grid point's test point, joined without an envelope
    assert report["curve_protocol"].startswith("no validation rows")
    assert report["validation"].startswith("none")
    for name, curve in report["curves"].items():
        assert curve["cost"] == sorted(curve["cost"]), name
        assert low in curve["cost"] and high in curve["cost"], name
        assert len(curve["kept"]) == len(report["sweeps"][name]["knobs"]), name
        assert 0.0 <= report["aiq"][name] <= 1.0
    assert [k["price_weight"] for k in report["curves"]["hybrid"]["kept"]] == \
        report["grids"]["price_weight"]
    assert report["rows_source"].startswith("all rows")
    assert report["per_category_rule"]["fitted_on"] == "two-fold cross-fit"


def test_saved_observations_repeat_the_report(report: dict, tiny_bert_dir: Path,
                                              bench_dir: Path) -> None:
    again = _bench(tiny_bert_dir, bench_dir, "again.json")
    assert again["approaches"] == report["approaches"]
    assert again["aiq"] == report["aiq"]


def test_docs_are_written_from_the_reports(report: dict, bench_dir: Path) -> None:
    folder = bench_dir / "reports"
    folder.mkdir(exist_ok=True)
    (folder / "routerbench.json").write_text(json.dumps(report))
    docs = bench_dir / "benchmarks.md"
    done = subprocess.run([*tier_router_exe(), "bench-docs", str(folder), str(docs)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    text = docs.read_text()
    frontier = report["approaches"]["frontier_only"]
    assert f"| frontier_only | ${frontier['cost_per_task'] * 1000:.3f}e-3 | 100.0% |" in text
    assert "hybrid AIQ - per_category_mix >= -0.01 (val-fixed" in text
    assert "AIQ with medium disabled" in text and "| reported |" in text
    assert report["command"] in text
    empty = bench_dir / "empty"
    empty.mkdir(exist_ok=True)
    failed = subprocess.run([*tier_router_exe(), "bench-docs", str(empty), str(docs)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert failed.returncode == 1 and "no bench reports" in failed.stderr
