"""The paraphrase benchmark on a small sample, with a cheap deterministic encoder (no model)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import pytest

from bench.paraphrase import fit_budget, fit_rule, load_queries, paraphrase_benchmark


class BagOfWordsEncoder:
    """Hashed bag of words, L2-normalised: paraphrases sharing words land close. Test stand-in."""

    name = "bag-of-words:256"
    dim = 256

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9']+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def test_clinc_out_of_scope_rows_can_never_be_a_correct_hit() -> None:
    data = load_queries("clinc150")
    oos_train = [q for q in data["train"] if q.intent.startswith("oos:")]
    assert len(oos_train) == 100 and len({q.intent for q in oos_train}) == 100
    assert sum(q.intent == "oos" for q in data["test"]) == 1000
    assert len(load_queries("clinc150", include_oos=False)["test"]) == 4500


@pytest.mark.parametrize("dataset", ["banking77", "clinc150"])
def test_benchmark_on_a_small_sample(dataset: str) -> None:
    memo: dict[str, np.ndarray] = {}
    result = paraphrase_benchmark(dataset, BagOfWordsEncoder(), max_train=1500, max_test=300,
                                  bootstrap=50, memo=memo, val_false_budget=0.05)
    rows, test = result["rows"], result["test"]
    assert rows["train"] == 1500 and rows["test"] == 300
    assert rows["cache_for_fit"] + rows["validation"] == 1500
    assert len(memo) >= 1500  # every distinct text encoded once, kept for the next call
    fitted = result["fitted"]
    assert fitted["false_share"] <= 0.05 and fitted["hit_rate"] > 0  # within the budget
    # plain cosine is fitted at the same validation hit rate
    assert result["baseline_fitted"]["validation_hit_rate"] >= fitted["hit_rate"]
    assert 0.0 <= test["hit_rate"] <= 1.0 and test["hits"] == round(test["hit_rate"] * 300)
    assert 0.0 <= test["false_share"] <= 1.0
    low, high = test["false_share_ci95"]
    assert low <= test["false_share"] <= high
    # The baseline at the same hit rate is plain cosine's best case: never better when the
    # fitted rule is plain cosine itself.
    if result["fitted"]["min_margin"] == 0.0 and result["fitted"]["min_support"] == 1:
        assert result["baseline_same_hit_rate"]["false_share"] <= test["false_share"] + 1e-9


def test_fit_rule_prefers_the_margin_with_fewer_false_hits() -> None:
    from bench.paraphrase import _Looked

    similarity = np.array([0.99, 0.98, 0.97, 0.96, 0.5, 0.4])
    margin = np.array([0.3, 0.01, 0.3, 0.3, 0.3, 0.3])
    correct = np.array([True, False, True, True, False, False])
    looked = _Looked(similarity, margin, np.ones(6, int), correct, np.zeros(6, bool),
                     np.zeros(6, bool))
    plain = fit_rule(looked, hit_rate=0.5, margins=[0.0])
    assert plain["false_share"] == pytest.approx(1 / 3)
    best = fit_rule(looked, hit_rate=0.5, margins=[0.0, 0.1])
    assert best["min_margin"] == 0.1 and best["false_share"] == 0.0
    assert best["similarity_threshold"] == 0.96


def test_fit_budget_takes_the_most_hits_within_the_false_share_budget() -> None:
    from bench.paraphrase import _Looked

    # cosines falling; the 3rd query is a false hit, the 6th too; 0.97 appears twice
    similarity = np.array([0.99, 0.98, 0.97, 0.97, 0.96, 0.95, 0.94, 0.5])
    correct = np.array([True, True, False, True, True, False, True, False])
    margin = np.array([0.3, 0.3, 0.01, 0.3, 0.3, 0.3, 0.3, 0.3])
    looked = _Looked(similarity, margin, np.ones(8, int), correct, np.zeros(8, bool),
                     np.zeros(8, bool))
    plain = fit_budget(looked, max_false_share=0.25, margins=[0.0])
    # 7 hits hold 2 false (29%); 5 hold 1 (20%): the cut may not split the 0.97 pair
    assert plain["hit_rate"] == 5 / 8 and plain["similarity_threshold"] == 0.96
    assert plain["false_share"] == pytest.approx(0.2)
    best = fit_budget(looked, max_false_share=0.25, margins=[0.0, 0.1])
    # the margin drops the false 0.97: 6 eligible hits hold 1 false
    assert best["min_margin"] == 0.1 and best["hit_rate"] == 6 / 8
    with pytest.raises(ValueError, match=r"within 0\.0%"):
        fit_budget(_Looked(similarity[2:3], margin[2:3], np.ones(1, int), correct[2:3],
                           np.zeros(1, bool), np.zeros(1, bool)),
                   max_false_share=0.0, margins=[0.0])
