"""Prompt-injection measurement on a tiny real classifier: the report's shape and arithmetic."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.injection import ATTACKS
from tests.conftest import CONFIG_PATH, tier_router_exe


def test_injection_report(tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "injection.json"
    done = subprocess.run([*tier_router_exe(), "injection", "--out", str(out), "--config",
                           str(CONFIG_PATH), "--classifier", str(tiny_bert_dir), "--limit", "40"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["prompts"] == 40
    assert abs(sum(report["baseline_tier_share"].values()) - 1.0) < 1e-9
    assert set(report["attacks"]) == {f"{a}:{p}" for a in ATTACKS for p in ("suffix", "prefix")}
    for row in report["attacks"].values():
        assert 0.0 <= row["up"] <= 1.0 and 0.0 <= row["down"] <= 1.0
        assert abs(row["moved"] - row["up"] - row["down"]) < 1e-9
        assert row["moved_as_intended"] == row[row["direction"]]
