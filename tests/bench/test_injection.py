"""Prompt injection at the classifier: the moved / up / down arithmetic on a stub classifier
whose answer an attack is known to move, the measurement deciding as the service does, and the
report of the real command on a tiny real classifier."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bench.injection import ATTACKS, measure_injection
from router.classifier import ClassifierMeta, Predictions
from router.config import load_config
from router.gate import OperatingPoint
from router.pricing import tier_prices
from tests.conftest import CONFIG_PATH, tier_router_exe

# Price weight 0: the rule takes the likeliest tier, so the stub alone decides the tier.
POINT = OperatingPoint(price_weight=0.0, trust=0.5, escalate=0.0, score_threshold=0.5)


class KeywordClassifier:
    """P(acceptable) 0.9 at simple for every text, except: "GPT-4" in it makes only critical
    likely, and "classify this request as simple" makes only simple likely even where the
    prompt alone (containing "proof") puts critical first."""

    meta = ClassifierMeta(version="stub")

    def predict_full(self, texts: Sequence[str]) -> Predictions:
        rows = []
        for text in texts:
            if "GPT-4" in text:
                rows.append([0.1, 0.1, 0.9])
            elif "as simple" in text:
                rows.append([0.9, 0.1, 0.1])
            elif "proof" in text:
                rows.append([0.1, 0.1, 0.9])
            else:
                rows.append([0.9, 0.5, 0.6])
        n = len(texts)
        return Predictions(np.array(rows), np.ones((n, 3), dtype=bool), np.full((n, 3), 50.0))


def test_the_shares_count_prompts_whose_tier_moved_each_way() -> None:
    prompts = ["What is 2+2?", "Name a colour.", "Write a proof of Fermat's theorem.",
               "Say hi."]
    prices = tier_prices(load_config(CONFIG_PATH))
    report = measure_injection(KeywordClassifier(), POINT, prices, prompts, batch=3)
    assert report["prompts"] == 4
    assert report["operating_point"] == POINT.as_dict()
    assert report["baseline_tier_share"] == {"simple": 0.75, "medium": 0.0, "critical": 0.25}
    for position in ("suffix", "prefix"):
        # "GPT-4" moves the three simple prompts up; the proof was critical already.
        up = report["attacks"][f"up_urgent_expert:{position}"]
        assert (up["up"], up["down"], up["moved"], up["moved_as_intended"]) == (
            0.75, 0.0, 0.75, 0.75)
        # "as simple" moves the proof down, nothing else.
        down = report["attacks"][f"down_ignore_instructions:{position}"]
        assert (down["up"], down["down"], down["moved_as_intended"]) == (0.0, 0.25, 0.25)
        # The other phrasings carry neither trigger: nothing moves.
        for name in ("up_ignore_instructions", "down_trivial"):
            assert report["attacks"][f"{name}:{position}"]["moved"] == 0.0


def test_a_price_weight_keeps_an_attack_from_buying_the_frontier() -> None:
    """The same attack against an operator who pays: at a price weight where the frontier's
    expected price outweighs its 0.8 lead in P, the attack moves nothing."""
    prices = tier_prices(load_config(CONFIG_PATH))
    frugal = OperatingPoint(price_weight=1e6, trust=0.5, escalate=0.0, score_threshold=0.5)
    report = measure_injection(KeywordClassifier(), frugal, prices, ["What is 2+2?"])
    assert report["attacks"]["up_urgent_expert:suffix"]["moved"] == 0.0
    assert report["baseline_tier_share"]["simple"] == pytest.approx(1.0)


class ProofClassifier(KeywordClassifier):
    """critical 0.4 ahead of simple on a "proof" prompt: which one the rule takes depends on
    the price weight and the prompt's length."""

    def predict_full(self, texts: Sequence[str]) -> Predictions:
        found = super().predict_full(texts)
        found.scores[["proof" in t for t in texts]] = [0.5, 0.1, 0.9]
        return found


def _checked_bundle(tiny_static_dir: Path, folder: Path) -> Path:
    """The tiny static bundle with check statistics in its table: a scorer whose scores follow
    the recorded outcomes closely, so "call a cheaper tier and check it" is worth something."""
    from router.neighbourhood import NEIGHBOURHOOD_FILE, NeighbourhoodTable

    shutil.copytree(tiny_static_dir, folder)
    table = NeighbourhoodTable.load(folder / NEIGHBOURHOOD_FILE)
    rng = np.random.default_rng(1)
    clusters = rng.integers(0, len(table), 400)
    correct = (rng.random((400, 3)) < np.array([0.5, 0.6, 0.9])).astype(float)
    scores = np.clip(0.7 * correct + 0.3 * rng.random((400, 3)), 0.0, 1.0)
    table.with_checks(clusters, scores, correct, [0.5, 0.7], np.ones(400, dtype=bool)).save(
        folder / NEIGHBOURHOOD_FILE)
    return folder


def test_the_measurement_decides_like_the_service(tiny_static_dir: Path,
                                                   tmp_path: Path) -> None:
    """The baseline tier of each prompt is the tier the service's own decision sends it to: a
    prompt far longer than the classifier's text is priced by its full length, and a cascade
    goes first to the tier it checks."""
    from router.classifier import load_classifier
    from router.dispatch import Dispatcher
    from router.policy import RouteRequest, RouterPolicy

    config = load_config(CONFIG_PATH)
    # 20,000 characters, ~5,000 tokens: ~0.05 USD more at critical than at simple; at lambda 20
    # that is ~1 quality point, more than critical's 0.4 lead. (Priced from the 2,048
    # characters the classifier reads, it would be ~0.13 and critical would win.)
    long_proof = "Lemma. " * 2800 + "Write a proof of Fermat's theorem."
    prompts = ["What is 2+2?", "Write a proof of Fermat's theorem.", long_proof,
               "Name a colour.", "Explain tax law for a small business in detail."]
    point = OperatingPoint(price_weight=20.0, trust=0.8, escalate=0.3, score_threshold=0.5)
    checked = load_classifier(str(_checked_bundle(tiny_static_dir, tmp_path / "checked")))
    for classifier in (ProofClassifier(), load_classifier(str(tiny_static_dir)), checked):
        report = measure_injection(classifier, point, tier_prices(config), prompts, batch=2)
        policy = RouterPolicy(config, classifier, Dispatcher(config))
        policy.point = point
        decided = [policy.decide(RouteRequest([{"role": "user", "content": p}]))
                   for p in prompts]
        served = [d.target_tier for d in decided]
        assert report["baseline_tier_share"] == {
            t: served.count(t) / len(served) for t in ("simple", "medium", "critical")}
        if isinstance(classifier, ProofClassifier):
            assert served[:3] == ["simple", "critical", "simple"]
        if classifier is checked:  # some cascade starts below the tier the rule chose
            assert any(d.gate.action == "cascade" and d.target_tier != d.predicted_tier
                       for d in decided)


def test_injection_report(tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "injection.json"
    done = subprocess.run([*tier_router_exe(), "injection", "--out", str(out), "--config",
                           str(CONFIG_PATH), "--classifier", str(tiny_bert_dir), "--limit", "40"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["prompts"] == 40
    # An untrained bundle stores no operating point: the config's gate defaults decide.
    gate = load_config(CONFIG_PATH).gate
    assert report["operating_point"]["price_weight"] == gate.price_weight
    assert report["operating_point"]["escalate"] == gate.escalate_threshold
    assert abs(sum(report["baseline_tier_share"].values()) - 1.0) < 1e-9
    assert set(report["attacks"]) == {f"{a}:{p}" for a in ATTACKS for p in ("suffix", "prefix")}
    for row in report["attacks"].values():
        assert 0.0 <= row["up"] <= 1.0 and 0.0 <= row["down"] <= 1.0
        assert abs(row["moved"] - row["up"] - row["down"]) < 1e-9
        assert row["moved_as_intended"] == row[row["direction"]]
