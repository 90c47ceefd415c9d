"""Text helpers shared by the training stages: PII scrubbing (:mod:`router.pii`, shared with the
request path's decision log) and MinHash near-duplicate search.

Near duplicates (:func:`minhash_signatures`, :func:`similar_pairs`): every text becomes a set of
shingles (word 5-grams; byte 5-grams of the lower-cased words for short texts), each set a MinHash
signature, and LSH banding proposes candidate pairs whose estimated Jaccard similarity is then
checked against the threshold. Pure numpy, seeded, identical on every platform and run.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from functools import cache

import numpy as np

# MMLU subject -> high-stakes domain (the tail slices and the router's override domains).
SUBJECT_DOMAINS: Mapping[str, str] = {
    **dict.fromkeys(("professional_law", "jurisprudence", "international_law"), "legal"),
    **dict.fromkeys(("professional_accounting", "econometrics", "high_school_macroeconomics",
                     "high_school_microeconomics"), "finance"),
    **dict.fromkeys(("professional_medicine", "clinical_knowledge", "college_medicine",
                     "medical_genetics", "anatomy", "virology", "nutrition"), "medical"),
}
DOMAINS: tuple[str, ...] = ("finance", "legal", "medical")

# --- MinHash ---------------------------------------------------------------------------------

SHINGLE_SIZE = 5
# Texts with fewer words than this are shingled by bytes: a 9-word intent has only 5 word
# 5-grams, so one changed word would already halve its Jaccard similarity.
MIN_WORDS_FOR_WORD_SHINGLES = 15
# Only the last this-many words are shingled: the classifier reads only the *end* of the text
# (its tokenizer truncates from the left at train.max_length, 128 tokens ~ 100 words), so two
# texts with the same ending are the same input to it; it also bounds the work.
SHINGLE_WINDOW_WORDS = 100
# Word shingles found in more than max(this many, this share of) texts are template
# boilerplate (few-shot preambles, shared system prompts, answer-format lines) and ignored:
# RouterBench's Winogrande prompts end in the same few-shot examples save the last ~30 words,
# which would otherwise make every pair of them look like paraphrases.
COMMON_SHINGLE_MIN_TEXTS = 50
COMMON_SHINGLE_SHARE = 0.005
_WORD = re.compile(r"\w+")
_FALSE_POSITIVE_WEIGHT = 0.1  # of the LSH band choice, see lsh_bands()
# LSH buckets up to this size yield all their pairs; bigger ones a star and a chain.
MAX_BUCKET_ALL_PAIRS = 300


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Bijective 64-bit mixer (SplitMix64 finaliser), in place on a uint64 array."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@cache
def _multipliers(n: int) -> np.ndarray:
    # Odd 64-bit constants, fixed forever: shingle hashes must not depend on the run.
    rng = np.random.default_rng(0x5EED)
    return rng.integers(0, 1 << 63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def _ngram_hashes(tokens: list[np.ndarray], salt: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every :data:`SHINGLE_SIZE`-gram of each token array (each at least
    that long): (uint64 hashes < 2**32, all documents in order; shingles per document)."""
    n = SHINGLE_SIZE
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    flat = np.concatenate(tokens)
    acc = np.full(len(flat) - n + 1, np.uint64(salt), dtype=np.uint64)
    for i, multiplier in enumerate(_multipliers(n)):
        acc += flat[i:len(flat) - n + 1 + i] * multiplier
    # Keep the n-grams that start and end inside one document.
    counts = lengths - n + 1
    first = np.repeat(np.cumsum(lengths) - lengths, counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return _splitmix64(acc[first + within]) >> np.uint64(32), counts


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (numpy 2's hash-based unique is several times slower here)."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def _drop_common(hashes: np.ndarray, counts: np.ndarray, limit: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Remove shingles present in more than ``limit`` documents, except from documents that
    would lose all of theirs. Same shapes as :func:`_ngram_hashes`' result."""
    doc = np.repeat(np.arange(len(counts), dtype=np.uint64), counts)
    # Document frequency: each (document, shingle) pair counted once.
    pairs = _sorted_unique((doc << np.uint64(32)) | hashes)
    values = np.sort(pairs & np.uint64(0xFFFFFFFF))
    run_starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    frequency = np.diff(np.append(run_starts, len(values)))
    common = values[run_starts[frequency > limit]]  # sorted
    if not len(common):
        return hashes, counts
    position = np.minimum(np.searchsorted(common, hashes), len(common) - 1)
    keep = common[position] != hashes
    kept = np.add.reduceat(keep.astype(np.int64), np.cumsum(counts) - counts)
    keep |= np.repeat(kept == 0, counts)
    return hashes[keep], np.where(kept == 0, counts, kept)


def shingle_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of every text: (uint64 array of 32-bit values, per-text offsets).

    Text i's shingles are ``hashes[offsets[i]:offsets[i + 1]]`` (``offsets`` has len(texts)+1
    entries; every text has at least one shingle). Words are ``\\w+`` runs, lower-cased, so
    case, punctuation and whitespace do not matter. Texts of :data:`MIN_WORDS_FOR_WORD_SHINGLES`
    or more words: word 5-grams of the last :data:`SHINGLE_WINDOW_WORDS` words, template
    boilerplate removed (see :data:`COMMON_SHINGLE_SHARE`); shorter texts: byte 5-grams of
    their words joined by single spaces.
    """
    word_ids: dict[str, int] = {}
    word_docs: list[int] = []
    word_tokens: list[list[int]] = []
    byte_docs: list[int] = []
    byte_tokens: list[np.ndarray] = []
    for index, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        if len(words) >= MIN_WORDS_FOR_WORD_SHINGLES:
            word_docs.append(index)
            word_tokens.append([word_ids.setdefault(w, len(word_ids))
                                for w in words[-SHINGLE_WINDOW_WORDS:]])
        else:
            byte_docs.append(index)
            # Padded so that even an empty text has one shingle (all empty texts are alike).
            raw = " ".join(words).encode("utf-8").ljust(SHINGLE_SIZE)
            byte_tokens.append(np.frombuffer(raw, dtype=np.uint8).astype(np.uint64))
    per_doc: list[np.ndarray] = [np.zeros(0, dtype=np.uint64)] * len(texts)
    if word_docs:
        # crc32 per distinct word: stable across processes, unlike hash() of a str.
        vocab = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in word_ids),
                            dtype=np.uint64, count=len(word_ids))
        hashes, counts = _ngram_hashes(
            [vocab[np.asarray(t, dtype=np.int64)] for t in word_tokens], salt=1)
        limit = max(COMMON_SHINGLE_MIN_TEXTS, COMMON_SHINGLE_SHARE * len(texts))
        hashes, counts = _drop_common(hashes, counts, limit)
        for doc, part in zip(word_docs, np.split(hashes, np.cumsum(counts)[:-1]), strict=True):
            per_doc[doc] = part
    if byte_docs:
        hashes, counts = _ngram_hashes(byte_tokens, salt=2)
        for doc, part in zip(byte_docs, np.split(hashes, np.cumsum(counts)[:-1]), strict=True):
            per_doc[doc] = part
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in per_doc])
    flat = np.concatenate(per_doc) if per_doc else np.zeros(0, dtype=np.uint64)
    return flat, offsets


def minhash_signatures(texts: Sequence[str], num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures, shape (len(texts), num_perm), uint32.

    Permutation k is the multiply-add-shift hash ``(a_k * x + b_k) mod 2**64 >> 32`` of each
    32-bit shingle hash x (a strongly universal family); ``seed`` picks the a_k, b_k.
    """
    hashes, offsets = shingle_hashes(texts)
    signatures = np.empty((len(texts), num_perm), dtype=np.uint32)
    if not len(texts):
        return signatures
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
    buffer = np.empty_like(hashes)
    for k in range(num_perm):
        np.multiply(hashes, a[k], out=buffer)
        buffer += b[k]
        buffer >>= np.uint64(32)
        signatures[:, k] = np.minimum.reduceat(buffer, offsets[:-1])
    return signatures


@cache
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band), bands * rows <= num_perm, minimising the weighted false-positive
    plus false-negative area of the candidate curve ``1 - (1 - s**rows)**bands`` around
    ``threshold``.

    False negatives weigh 9 times more: a missed pair is lost for good, while a false candidate
    only costs one signature comparison. 64 permutations at 0.9 give 5 bands of 12 rows: a pair
    at similarity 0.9 is a candidate with probability 0.81, at 0.95 with 0.98.
    """
    best: tuple[float, int, int] | None = None
    s = np.linspace(0.0, 1.0, 201)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            candidate = 1 - (1 - s**rows) ** bands
            false_pos = np.trapezoid(np.where(s < threshold, candidate, 0.0), s)
            false_neg = np.trapezoid(np.where(s >= threshold, 1 - candidate, 0.0), s)
            error = float(_FALSE_POSITIVE_WEIGHT * false_pos
                          + (1 - _FALSE_POSITIVE_WEIGHT) * false_neg)
            if best is None or error < best[0]:
                best = (error, bands, rows)
    assert best is not None
    return best[1], best[2]


def candidate_pairs(signatures: np.ndarray, threshold: float) -> np.ndarray:
    """Pairs (i, j), i < j, sharing at least one LSH band; shape (m, 2), int64, sorted."""
    n, num_perm = signatures.shape
    bands, rows = lsh_bands(threshold, num_perm)
    found: list[np.ndarray] = []
    for band in range(bands):
        # One 64-bit key per band; a rare key collision only adds a candidate, which
        # similar_pairs() then rejects.
        keys = np.zeros(n, dtype=np.uint64)
        for k, multiplier in enumerate(_multipliers(rows)):
            keys += signatures[:, band * rows + k].astype(np.uint64) * multiplier
        keys = _splitmix64(keys)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        # Runs of equal keys: every pair inside a run is a candidate.
        boundaries = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        run_starts = np.concatenate(([0], boundaries))
        run_ends = np.concatenate((boundaries, [n]))
        for start, end in zip(run_starts, run_ends, strict=True):
            if end - start < 2:
                continue
            members = np.sort(order[start:end])
            if len(members) > MAX_BUCKET_ALL_PAIRS:
                # A huge bucket (thousands of near-identical templated requests): a star on
                # its first member plus a chain keeps the work linear; all pairs would be
                # quadratic in memory.
                found.append(np.stack((np.repeat(members[0], len(members) - 1), members[1:]),
                                      axis=1))
                found.append(np.stack((members[:-1], members[1:]), axis=1))
                continue
            i, j = np.triu_indices(len(members), 1)
            found.append(np.stack((members[i], members[j]), axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    # A pair found in several bands counts once: dedupe on i * n + j (sorted by i, then j).
    flat = np.concatenate(found).astype(np.int64)
    keys = _sorted_unique(flat[:, 0] * n + flat[:, 1])
    return np.stack((keys // n, keys % n), axis=1)


def similar_pairs(signatures: np.ndarray, threshold: float) -> np.ndarray:
    """LSH candidate pairs (i, j), i < j, whose estimated Jaccard similarity (share of equal
    signature entries) is at least ``threshold``; shape (m, 2), int64, sorted."""
    pairs = candidate_pairs(signatures, threshold)
    if not len(pairs):
        return pairs
    similarity = np.concatenate([
        (signatures[chunk[:, 0]] == signatures[chunk[:, 1]]).mean(axis=1)
        for chunk in np.array_split(pairs, max(1, len(pairs) // 100_000))])
    return pairs[similarity >= threshold]


def connected_components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Component label of each of ``n`` items linked by ``pairs`` (union-find): the smallest
    item index in its component; shape (n,), int64."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for i, j in pairs.tolist():
        root_i, root_j = find(i), find(j)
        if root_i != root_j:
            # The smaller index becomes the root, so the label is the component's minimum.
            parent[max(root_i, root_j)] = min(root_i, root_j)
    return np.fromiter((find(x) for x in range(n)), dtype=np.int64, count=n)
