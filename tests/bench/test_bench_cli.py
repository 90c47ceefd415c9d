"""``tier-router bench`` end to end on a small workload: the report's invariants hold."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

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
    assert set(approaches) == {"frontier_only", "routing_only", "cascade_only", "hybrid",
                               "random_mix", "best_fixed_mix", "per_category_mix", "oracle"}
    oracle = approaches["oracle"]
    for name, row in approaches.items():
        assert set(row) >= {"cost_per_task", "p95_latency_ms", "quality", "quality_ci",
                            "escalation_rate", "cache_hit_rate", "frontier_call_share"}
        assert oracle["quality"] >= row["quality"] - 1e-9, name
        low, high = row["quality_ci"]
        assert low <= row["quality"] <= high, name
    assert oracle["cost_per_task"] <= approaches["frontier_only"]["cost_per_task"]
    assert approaches["frontier_only"]["frontier_call_share"] == 1.0
    # random_mix and best_fixed_mix are priced at the hybrid's cost
    for name in ("random_mix", "best_fixed_mix"):
        assert approaches[name]["cost_per_task"] == pytest.approx(
            approaches["hybrid"]["cost_per_task"], rel=1e-6)


def test_every_curve_runs_from_the_cheapest_tier_to_frontier_only(report: dict) -> None:
    low, high = report["aiq"]["cost_range"]
    frontier = report["approaches"]["frontier_only"]
    assert high == pytest.approx(frontier["cost_per_task"])
    for name, curve in report["curves"].items():
        assert curve["cost"][0] == pytest.approx(low), name
        assert curve["cost"] == sorted(curve["cost"])
        assert curve["quality"] == sorted(curve["quality"]), name  # non-decreasing
        # the curve reaches frontier-only's quality (or beats it earlier)
        assert curve["quality"][-1] >= frontier["quality"] - 1e-9, name
        assert 0.0 <= report["aiq"][name] <= 1.0
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
    assert "hybrid AIQ above per_category_mix, interval excluding 0" in text
    assert report["command"] in text
    empty = bench_dir / "empty"
    empty.mkdir(exist_ok=True)
    failed = subprocess.run([*tier_router_exe(), "bench-docs", str(empty), str(docs)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert failed.returncode == 1 and "no bench reports" in failed.stderr
