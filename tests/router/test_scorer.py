"""Response scorers: fixed:, a local bundle, bad bundles (clear ScorerError)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from router.normalise import normalise
from router.scorer import (
    CHEAP_FEATURES,
    HEAD_FILE,
    SCORER_META,
    EmbeddingScorer,
    FixedScorer,
    ScorerError,
    apply_calibration,
    cheap_features,
    clean_response,
    load_scorer,
)

PROMPTS = [normalise("What is 17 * 3?"),
           normalise("Question: " * 300 + "Which gas do plants absorb? A) O2 B) CO2\nAnswer:")]
RESPONSES = ["17 * 3 = 51. The answer is 51", "B"]


def test_fixed_scorer() -> None:
    scorer = load_scorer("fixed:0.7")
    assert isinstance(scorer, FixedScorer)
    assert scorer.score(PROMPTS, RESPONSES) == [0.7, 0.7]
    assert scorer.meta.version == "fixed:0.7"
    assert scorer.meta.threshold is None
    for bad in ("fixed:1.5", "fixed:-0.1", "fixed:nan", "fixed:high"):
        with pytest.raises(ScorerError, match="fixed scorer"):
            load_scorer(bad)
    with pytest.raises(ScorerError, match="2 prompts but 1 responses"):
        scorer.score(PROMPTS, RESPONSES[:1])


def test_bundle_scores_probabilities(tiny_scorer_dir: Path) -> None:
    scorer = load_scorer(str(tiny_scorer_dir))
    assert isinstance(scorer, EmbeddingScorer)
    assert scorer.meta.version == "tiny-scorer"
    assert scorer.meta.threshold == pytest.approx(0.42)
    scores = scorer.score(PROMPTS, RESPONSES)
    assert len(scores) == 2
    assert all(0.0 <= s <= 1.0 for s in scores)
    # One pair alone scores as it does in a batch (no padding leaks into the pooled vector).
    assert scorer.score(PROMPTS[:1], RESPONSES[:1])[0] == pytest.approx(scores[0], abs=1e-5)
    assert load_scorer(f"path:{tiny_scorer_dir}").score(PROMPTS, RESPONSES) == \
        pytest.approx(scores, abs=1e-6)
    assert scorer.score([], []) == []
    # The answer matters, not only the prompt; so does the tier that answered.
    assert scorer.score(PROMPTS[:1], ["I am not sure."])[0] != pytest.approx(scores[0], abs=1e-6)
    by_tier = [scorer.score(PROMPTS[:1], RESPONSES[:1], [tier])[0]
               for tier in ("simple", "medium", "critical", None)]
    assert by_tier[3] == pytest.approx(scores[0], abs=1e-6)
    assert len({round(s, 6) for s in by_tier}) == 4
    with pytest.raises(ScorerError, match="are not tiers"):
        scorer.score(PROMPTS[:1], RESPONSES[:1], ["frontier"])
    with pytest.raises(ScorerError, match="2 prompts but 1 tiers"):
        scorer.score(PROMPTS, RESPONSES, ["simple"])


def test_calibration_maps() -> None:
    raw = np.array([0.1, 0.5, 0.9])
    assert apply_calibration(raw, {"method": "none"}) == pytest.approx(raw)
    assert apply_calibration(raw, {"method": "platt", "a": 1.0, "b": 0.0}) == pytest.approx(raw)
    assert apply_calibration(raw, {"method": "platt", "a": 0.0, "b": 0.0}) == pytest.approx(0.5)
    per_tier = {"method": "platt", "a": 1.0, "b": 0.0, "by_tier": {"simple": {"a": 0.0,
                                                                           "b": 0.0}}}
    assert apply_calibration(raw, per_tier, ["simple", None, "critical"]) == \
        pytest.approx([0.5, 0.5, 0.9])
    assert apply_calibration(raw, per_tier) == pytest.approx(raw)
    iso = {"method": "isotonic", "x": [0.2, 0.8], "y": [0.3, 0.7]}
    assert apply_calibration(raw, iso) == pytest.approx([0.3, 0.5, 0.7])
    with pytest.raises(ScorerError, match="unknown calibration"):
        apply_calibration(raw, {"method": "beta"})


def test_features_keep_the_end_of_the_answer() -> None:
    long = "step " * 1000 + "so the answer is 42"
    assert clean_response(long, 64).endswith("so the answer is 42")
    assert len(clean_response(long, 64)) == 64
    features = cheap_features(PROMPTS, RESPONSES)
    assert features.shape == (2, len(CHEAP_FEATURES))
    named = dict(zip(CHEAP_FEATURES, features[1], strict=True))
    assert named["short_answer"] == 1.0
    assert dict(zip(CHEAP_FEATURES, features[0], strict=True))["ends_with_number"] == 1.0


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


@pytest.mark.parametrize(("meta", "message"), [
    ("{not json", "unreadable"),
    ({"format": 99, "version": "x", "calibration": {"method": "none"}}, "format 99"),
    ({"format": 1, "version": "x", "threshold": 1.5, "calibration": {"method": "none"}},
     "threshold must be in"),
    ({"format": 1, "version": "x", "calibration": {"method": "beta"}}, "calibration needs"),
    ({"format": 1, "version": "x", "calibration": {"method": "platt", "a": 1.0}},
     "bad platt calibration"),
    ({"format": 1, "version": "x", "calibration": {"method": "platt", "a": 1.0, "b": 0.0,
                                                   "by_tier": {"frontier": {"a": 1, "b": 0}}}},
     "not tiers"),
    ({"format": 1, "version": "x", "calibration": {"method": "isotonic", "x": [0.5, 0.1],
                                                   "y": [0.1, 0.2]}},
     "bad isotonic calibration"),
])
def test_bad_meta_is_a_clear_error(tiny_scorer_dir: Path, tmp_path: Path, meta,
                                   message: str) -> None:
    bundle = _copy(tiny_scorer_dir, tmp_path)
    (bundle / SCORER_META).write_text(meta if isinstance(meta, str) else json.dumps(meta))
    with pytest.raises(ScorerError, match=message):
        load_scorer(str(bundle))


def test_bad_bundles_are_clear_errors(tiny_scorer_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ScorerError, match="neither fixed, path, models"):
        load_scorer(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScorerError, match="not a scorer bundle"):
        load_scorer(str(empty))

    bundle = _copy(tiny_scorer_dir, tmp_path)
    (bundle / HEAD_FILE).write_bytes(b"garbage")
    with pytest.raises(ScorerError, match="not a scorer head"):
        load_scorer(str(bundle))
    np.savez(bundle / HEAD_FILE, mean=np.zeros(5), scale=np.ones(5), coef=np.ones(5),
             intercept=np.zeros(1))
    with pytest.raises(ScorerError, match="head has 5 weights"):
        load_scorer(str(bundle))

    shutil.copy2(tiny_scorer_dir / HEAD_FILE, bundle / HEAD_FILE)
    shutil.rmtree(bundle / "encoder")
    with pytest.raises(ScorerError, match="not an encoder directory"):
        load_scorer(str(bundle))
