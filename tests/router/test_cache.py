"""The semantic cache: keys, exact and semantic hits, isolation, TTL, bounds, persistence, threads.

Tiny deterministic vectors where the encoder is not the point; the real MiniLM where it is.
"""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from router.cache import (
    CacheError,
    EncoderError,
    SemanticCache,
    SharedPassEncoder,
    cache_key,
    create_cache,
)
from router.cache.embedded import FILE_NAME, EmbeddedCache
from router.classifier import FixedTierClassifier, InProcessClassifier, load_classifier
from router.config import CacheConfig

DIM = 8


class FakeClock:
    """A settable clock in seconds since the epoch."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def unit(*values: float) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[:len(values)] = values
    return vector / np.linalg.norm(vector)


def key(text: str, *, tenant: str = "acme", system: str | None = None, **params):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}]
    return cache_key(messages, params, "auto", tenant)


def answer(text: str) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}]}


def make_cache(**overrides) -> EmbeddedCache:
    settings = {"dim": DIM, "encoder_name": "test", "threshold": 0.9, "clock": FakeClock()}
    settings.update(overrides)
    return EmbeddedCache(**settings)


@pytest.fixture(params=["embedded", "chroma"])
def make(request: pytest.FixtureRequest):
    """The contract tests' cache factory, once per backend: in-process faiss, and a real Chroma
    server (each cache its own embedding space, so tests never see each other's entries)."""
    if request.param == "embedded":
        return make_cache
    from router.cache.chroma import ChromaCache

    server = request.getfixturevalue("chroma_server")

    def factory(**overrides) -> ChromaCache:
        settings = {"dim": DIM, "encoder_name": f"test-{uuid.uuid4().hex}", "threshold": 0.9,
                    "clock": FakeClock()}
        settings.update(overrides)
        return ChromaCache(url=server.url, **settings)
    return factory


# -- keys ---------------------------------------------------------------------------------------

def test_key_whitespace_and_unicode_normalised_but_case_kept() -> None:
    assert key("How do I  reset\nmy PIN?").exact == key("How do I reset my PIN?").exact
    assert key("Caf\u0065\u0301?").exact == key("Caf\u00e9?").exact
    assert key("reset my PIN").exact != key("reset my pin").exact


def test_key_scope_covers_everything_but_the_last_user_turn() -> None:
    base = key("reset my PIN", temperature=0.2)
    assert key("reset my PIN", temperature=0.2, stream=True, user="u1").exact == base.exact
    assert key("reset my PIN", temperature=0.2, max_tokens=None).exact == base.exact
    for other in (key("reset my PIN", temperature=0.7),
                  key("reset my PIN", system="Be terse.", temperature=0.2),
                  key("reset my PIN", temperature=0.2, tools=[{"type": "function"}]),
                  key("reset my PIN", temperature=0.2, response_format={"type": "json_object"}),
                  cache_key([{"role": "user", "content": "reset my PIN"}],
                            {"temperature": 0.2}, "critical", "acme")):
        assert other.scope != base.scope and other.exact != base.exact
    assert key("change my PIN", temperature=0.2).scope == base.scope
    assert (key("q", system="Be  terse.\n").scope == key("q", system="Be terse.").scope
            != key("q", system="be terse.").scope)
    assert key("reset my PIN", tenant="other", temperature=0.2).tenant == "other"


def test_key_earlier_turns_pin_the_scope_and_the_last_user_turn_is_the_query() -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "what is 2+2?"}]
    other = [*turns[:1], {"role": "assistant", "content": "hey"}, turns[2]]
    first = cache_key(turns, {}, "auto", "t")
    assert first.query == "what is 2+2?"
    assert cache_key(other, {}, "auto", "t").scope != first.scope


def test_key_long_prompts_differing_at_the_front_stay_distinct() -> None:
    tail = " Which answer is right?" + " padding" * 600
    assert key("Question A." + tail).exact != key("Question B." + tail).exact


def test_key_image_payload_pins_the_scope() -> None:
    def with_image(url: str):
        return cache_key([{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": url}}]}], {}, "auto", "t")

    assert with_image("https://a/1.png").exact != with_image("https://a/2.png").exact
    assert with_image("https://a/1.png").exact == with_image("https://a/1.png").exact


# -- hits and misses ----------------------------------------------------------------------------

def test_exact_hit_returns_a_copy_with_similarity_one(make) -> None:
    cache = make()
    entry_id = cache.store(key("reset my PIN"), answer("Go to settings."), "simple",
                           unit(1, 0))
    hit = cache.lookup(key("reset  my PIN"))  # no embedding needed for an exact hit
    assert hit is not None and hit.kind == "exact" and hit.similarity == 1.0
    assert (hit.entry_id, hit.tier, hit.stored_at) == (entry_id, "simple", 1_000_000.0)
    hit.response["choices"][0]["message"]["content"] = "changed"
    assert cache.lookup(key("reset my PIN")).response == answer("Go to settings.")


def test_semantic_hit_above_threshold_miss_below(make) -> None:
    cache = make(threshold=0.9)
    cache.store(key("reset my PIN"), answer("Go to settings."), "simple", unit(1, 0))
    near = cache.lookup(key("how to reset PIN"), unit(1, 0.3))  # cosine 0.958
    assert near is not None and near.kind == "semantic"
    assert near.similarity == pytest.approx(0.958, abs=1e-3)
    assert cache.lookup(key("what is a PIN"), unit(1, 0.6)) is None  # cosine 0.857
    assert cache.lookup(key("what is a PIN")) is None  # no embedding: exact only


def test_semantic_hit_with_real_minilm(minilm_encoder) -> None:
    cache = create_cache(CacheConfig(similarity_threshold=0.75), minilm_encoder, path=None)
    stored, paraphrase, unrelated = minilm_encoder.encode(
        ["How do I reset my PIN?", "how can i reset my pin", "What's the weather in Paris?"])
    cache.store(key("How do I reset my PIN?"), answer("Settings > Card > PIN."), "simple",
                stored)
    hit = cache.lookup(key("how can i reset my pin"), paraphrase)
    assert hit is not None and hit.kind == "semantic" and hit.similarity > 0.75
    assert cache.lookup(key("What's the weather in Paris?"), unrelated) is None


def test_tenants_never_share_entries(make) -> None:
    cache = make()
    cache.store(key("reset my PIN", tenant="acme"), answer("acme's answer"), "simple",
                unit(1, 0))
    assert cache.lookup(key("reset my PIN", tenant="globex"), unit(1, 0)) is None
    assert cache.nearest(key("reset my PIN", tenant="globex"), unit(1, 0)) is None
    assert cache.lookup(key("reset my PIN", tenant="acme"), unit(1, 0)) is not None


def test_scope_must_match_for_a_semantic_hit(make) -> None:
    cache = make()
    cache.store(key("reset my PIN", temperature=0.0), answer("a"), "simple", unit(1, 0))
    assert cache.lookup(key("reset PIN please", temperature=0.0), unit(1, 0.1)) is not None
    assert cache.lookup(key("reset PIN please", temperature=0.9), unit(1, 0.1)) is None
    assert cache.lookup(key("reset PIN please", system="Pirate voice.", temperature=0.0),
                        unit(1, 0.1)) is None


def test_agreement_margin_rejects_a_query_between_two_answers(make) -> None:
    def filled(min_margin: float) -> SemanticCache:
        cache = make(threshold=0.7, min_margin=min_margin, neighbours=4)
        cache.store(key("block my card"), answer("blocked"), "simple", unit(1, 0))
        cache.store(key("card lost"), answer("blocked"), "simple", unit(1, 0.05))
        cache.store(key("cancel my card"), answer("cancelled"), "simple", unit(0, 1))
        return cache

    ambiguous = unit(1, 0.95)  # cosine 0.758 to "card lost", 0.689 to "cancel my card"
    assert filled(0.0).lookup(key("q"), ambiguous) is not None  # plain cosine takes it
    cache = filled(0.1)
    match = cache.nearest(key("q"), ambiguous)
    assert match is not None and match.similarity == pytest.approx(0.758, abs=1e-3)
    assert match.runner_up == pytest.approx(0.689, abs=1e-3) and match.margin < 0.1
    assert cache.lookup(key("q"), ambiguous) is None
    clear = unit(1, 0.02)
    match = cache.nearest(key("q"), clear)
    assert match is not None and match.support == 2 and match.margin > 0.1
    assert cache.lookup(key("q"), clear).response == answer("blocked")


def test_min_support_needs_the_nearest_entries_to_agree(make) -> None:
    cache = make(threshold=0.9, min_support=2, neighbours=4)
    cache.store(key("block my card"), answer("blocked"), "simple", unit(1, 0))
    cache.store(key("card lost"), answer("blocked"), "simple", unit(1, 0.1))
    cache.store(key("card stolen"), answer("stolen"), "simple", unit(1, -0.3))
    near_pair = unit(1, 0.05)  # nearest two both "blocked"
    assert cache.nearest(key("q"), near_pair).support == 2
    assert cache.lookup(key("q"), near_pair).response == answer("blocked")
    near_odd = unit(1, -0.35)  # nearest is "stolen", next is "blocked": support 1
    assert cache.nearest(key("q"), near_odd).support == 1
    assert cache.lookup(key("q"), near_odd) is None
    with pytest.raises(CacheError, match="exceeds neighbours"):
        make(min_support=5, neighbours=4)


def test_wrong_embedding_shape_is_a_domain_error(make) -> None:
    cache = make()
    with pytest.raises(CacheError, match="8 finite numbers"):
        cache.store(key("x"), answer("a"), "simple", np.ones(3))
    with pytest.raises(CacheError, match="JSON"):
        cache.store(key("x"), {"bad": object()}, "simple")


# -- lifetime -----------------------------------------------------------------------------------

def test_ttl_expired_entries_are_never_served_and_are_purged(make) -> None:
    clock = FakeClock()
    cache = make(ttl_s=60.0, clock=clock)
    cache.store(key("reset my PIN"), answer("a"), "simple", unit(1, 0))
    clock.now += 59.0
    assert cache.lookup(key("reset my PIN")) is not None
    assert cache.lookup(key("reset PIN?"), unit(1, 0.1)) is not None
    clock.now += 1.0
    assert cache.lookup(key("reset my PIN")) is None
    assert cache.lookup(key("reset PIN?"), unit(1, 0.1)) is None
    assert len(cache) == 0


def test_size_bound_drops_the_oldest_first(make) -> None:
    clock = FakeClock()
    cache = make(max_entries=3, clock=clock)
    for i in range(5):
        clock.now += 1
        cache.store(key(f"q{i}"), answer(f"a{i}"), "simple", unit(1, i))
    assert len(cache) == 3
    assert cache.lookup(key("q0")) is None and cache.lookup(key("q1")) is None
    assert cache.lookup(key("q4")).response == answer("a4")


def test_restoring_a_key_replaces_its_entry(make) -> None:
    cache = make()
    first = cache.store(key("q"), answer("old"), "simple", unit(1, 0))
    second = cache.store(key("q"), answer("new"), "medium", unit(1, 0))
    assert first != second and len(cache) == 1
    assert cache.lookup(key("q")).response == answer("new")
    assert cache.lookup(key("q?"), unit(1, 0)).entry_id == second


def test_evict_on_negative_feedback(make) -> None:
    cache = make()
    entry_id = cache.store(key("q"), answer("wrong"), "simple", unit(1, 0))
    hit = cache.lookup(key("q similar"), unit(1, 0.1))
    assert hit is not None and hit.entry_id == entry_id
    assert cache.evict(entry_id) is True
    assert cache.lookup(key("q similar"), unit(1, 0.1)) is None
    assert cache.lookup(key("q")) is None
    assert cache.evict(entry_id) is False


def test_hnsw_partition_with_tombstones_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cache = make_cache(threshold=-1.0, hnsw_min_entries=64, max_dead_share=0.9)
    ids = [cache.store(key(f"q{i}"), answer(f"a{i}"), "simple", v)
           for i, v in enumerate(vectors)]
    part = next(iter(cache._partitions.values()))
    assert part.hnsw
    dead = set(range(0, 300, 3))
    for i in dead:
        cache.evict(ids[i])
    assert part.dead == len(dead)  # tombstoned, not rebuilt (max_dead_share=0.9)
    live = np.array(sorted(set(range(300)) - dead))
    for query in rng.normal(size=(40, DIM)).astype(np.float32):
        query /= np.linalg.norm(query)
        hit = cache.lookup(key("probe"), query)
        assert hit is not None and hit.entry_id in {ids[i] for i in live}
        assert hit.entry_id == ids[live[np.argmax(vectors[live] @ query)]]


def test_store_many_equals_store() -> None:
    vectors = np.stack([unit(1, i) for i in range(5)])
    cache = make_cache(threshold=0.99, hnsw_min_entries=2)
    ids = cache.store_many([key(f"q{i}") for i in range(5)],
                           [answer(f"a{i}") for i in range(5)], ["simple"] * 5, vectors)
    assert [cache.lookup(key("probe"), v).entry_id for v in vectors] == ids


# -- persistence --------------------------------------------------------------------------------

def test_persistence_round_trip(tmp_path: Path) -> None:
    clock = FakeClock()
    cache = make_cache(path=tmp_path, clock=clock, ttl_s=100.0)
    cache.store(key("old"), answer("stale"), "simple", unit(0, 1))
    clock.now += 50
    kept = cache.store(key("reset my PIN"), answer("a"), "medium", unit(1, 0))
    cache.store(key("exact only"), answer("b"), "simple")
    cache.close()
    assert (tmp_path / FILE_NAME).exists()
    clock.now += 60  # "old" has expired by now, the others have not
    reloaded = make_cache(path=tmp_path, clock=clock, ttl_s=100.0)
    assert len(reloaded) == 2
    hit = reloaded.lookup(key("reset PIN"), unit(1, 0.1))
    assert hit is not None and (hit.entry_id, hit.tier) == (kept, "medium")
    assert reloaded.lookup(key("exact only")).response == answer("b")
    assert reloaded.lookup(key("something"), unit(0, 1)) is None


def test_persisted_file_from_another_encoder_is_not_loaded(tmp_path: Path, caplog) -> None:
    cache = make_cache(path=tmp_path)
    cache.store(key("q"), answer("a"), "simple", unit(1, 0))
    cache.close()
    with caplog.at_level(logging.WARNING, logger="router.cache.embedded"):
        other = make_cache(path=tmp_path, encoder_name="another")
    assert len(other) == 0 and "another" in caplog.text


@pytest.mark.parametrize("content", [b"not a zip at all", b"PK\x03\x04truncated", b""])
def test_corrupt_file_starts_empty_with_a_warning(tmp_path: Path, caplog,
                                                  content: bytes) -> None:
    (tmp_path / FILE_NAME).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="router.cache.embedded"):
        cache = make_cache(path=tmp_path)
    assert len(cache) == 0 and "starting empty" in caplog.text
    cache.store(key("q"), answer("a"), "simple", unit(1, 0))
    cache.flush()
    assert len(make_cache(path=tmp_path)) == 1


def test_create_cache_from_config(tmp_path: Path, minilm_encoder) -> None:
    config = CacheConfig(path=str(tmp_path / "cache"), similarity_threshold=0.8, ttl_s=10,
                         max_entries=5, min_margin=0.1, neighbours=4)
    cache = create_cache(config, minilm_encoder)
    assert (cache.threshold, cache.ttl_s, cache.max_entries) == (0.8, 10.0, 5)
    assert (cache.min_margin, cache.neighbours, cache.dim) == (0.1, 4, 384)
    assert create_cache(config, minilm_encoder, threshold=0.91).threshold == 0.91
    with pytest.raises(CacheError, match="unknown cache backend"):
        create_cache(config.model_copy(update={"backend": "redis"}), minilm_encoder)


# -- threads ------------------------------------------------------------------------------------

def test_concurrent_store_lookup_evict_from_threads(tmp_path: Path) -> None:
    cache = make_cache(path=tmp_path, threshold=0.5, hnsw_min_entries=32, clock=lambda: 1e6)
    errors: list[BaseException] = []

    def worker(worker_id: int) -> None:
        rng = np.random.default_rng(worker_id)
        try:
            for i in range(60):
                vector = rng.normal(size=DIM).astype(np.float32)
                entry_id = cache.store(key(f"w{worker_id}-{i}"), answer(f"{worker_id}-{i}"),
                                       "simple", vector)
                assert cache.lookup(key(f"w{worker_id}-{i}")).entry_id == entry_id
                cache.lookup(key("probe"), vector)
                if i % 5 == 0:
                    assert cache.evict(entry_id)
                if i % 20 == 0:
                    cache.flush()
        except BaseException as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(cache) == 6 * 48
    cache.close()
    assert len(make_cache(path=tmp_path, clock=lambda: 1e6)) == 6 * 48


# -- the shared encoder pass --------------------------------------------------------------------

def test_predict_full_carries_the_embedding_of_the_classifier_pass(tiny_bert_dir: Path) -> None:
    classifier = InProcessClassifier(tiny_bert_dir)
    texts = ["user: reset my PIN", "user: what is the capital of France? " * 3]
    found = classifier.predict_full(texts)
    expected = classifier.predict(texts)
    for i, want in enumerate(expected):
        assert found.tier_scores(i) == pytest.approx(want, abs=1e-6)
    embeddings = found.embeddings
    assert embeddings.shape == (2, 32) and embeddings.dtype == np.float32
    assert np.linalg.norm(embeddings, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert not np.allclose(embeddings[0], embeddings[1], atol=1e-3)
    empty = classifier.predict_full([])
    assert empty.embeddings.shape == (0, 32) and empty.scores.shape == (0, 3)


def test_the_shared_pass_encoder_reuses_the_classifiers_embeddings(tiny_bert_dir: Path,
                                                                   tiny_static_dir: Path) -> None:
    classifier = InProcessClassifier(tiny_bert_dir)
    encoder = SharedPassEncoder(classifier)
    texts = [f"user: question {i}" for i in range(5)]
    assert (encoder.dim, encoder.name) == (32, f"classifier:{classifier.meta.version}:32")
    # batches of 2 give the rows one pass over all five would
    vectors = encoder.encode(texts, batch_size=2)
    assert np.allclose(vectors, classifier.predict_full(texts).embeddings, atol=1e-5)
    assert encoder.encode([]).shape == (0, 32)
    static = load_classifier(str(tiny_static_dir))
    assert SharedPassEncoder(static).encode(texts).shape == (5, 16)
    with pytest.raises(EncoderError, match="returns no embeddings"):
        SharedPassEncoder(FixedTierClassifier("simple"))
