"""normalise(): the one function that turns a chat request into the classifier's text.

Training (label, train, evaluate) and serving (policy, cache) both call it, so the classifier sees
the same text format in both places.

Why the *end* is kept: encoders read the first 128-256 tokens, yet many real prompts differ only
at the end. RouterBench's few-shot ARC prompts share their first ~1,700 characters and put the
question that matters last. So the final user turn goes last in the text, truncation drops text
from the *front*, and the classifier's tokenizer must truncate from the left too
(:func:`encode_for_classifier`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from router.errors import RequestFormatError

# Characters kept, counted from the end. Bounds tokenizer work on huge prompts; the classifier's
# own token limit (128-256 tokens, ~4 characters each in English) cuts further, also from the left.
DEFAULT_MAX_CHARS = 2048
TRUNCATION_MARK = "… "
_WHITESPACE = re.compile(r"\s+")

Message = Mapping[str, Any]
ChatRequest = str | Sequence[Message] | Mapping[str, Any]


def message_text(content: Any) -> str:
    """Text of one OpenAI message ``content``: a string, None, or a list of content parts.

    Non-text parts (images, audio, files) are represented by their type, e.g. ``[image_url]``, so
    that a request with an image differs from the same request without it.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        pieces = []
        for part in content:
            if not isinstance(part, Mapping) or "type" not in part:
                raise RequestFormatError(f"content part must be an object with a 'type': {part!r}")
            if part["type"] == "text":
                pieces.append(str(part.get("text", "")))
            else:
                pieces.append(f"[{part['type']}]")
        return "\n".join(pieces)
    raise RequestFormatError(f"message content must be a string or a list of parts, "
                             f"got {type(content).__name__}")


# OpenAI's chat roles ("function" is its deprecated predecessor of "tool").
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def request_messages(request: ChatRequest) -> list[Message]:
    """The message list of a request given as a string, a message list or a request body."""
    if isinstance(request, str):
        return [{"role": "user", "content": request}]
    if isinstance(request, Mapping):
        if "messages" not in request:
            raise RequestFormatError("request has no 'messages'")
        request = request["messages"]
    if not isinstance(request, Sequence) or not request:
        raise RequestFormatError("request must hold a non-empty list of messages")
    for message in request:
        if not isinstance(message, Mapping) or "role" not in message:
            raise RequestFormatError(f"each message needs a 'role': {message!r:.80}")
        if message["role"] not in ROLES:
            raise RequestFormatError(f"unknown message role {message['role']!r:.40}; use one of "
                                     f"{', '.join(ROLES)}")
    if not any(message["role"] == "user" for message in request):
        raise RequestFormatError("request has no user message")
    return list(request)


def _clean(text: str) -> str:
    # NFC so that composed and decomposed accents match; whitespace runs carry no meaning for
    # the classifier and only spend the character budget.
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def normalise(request: ChatRequest, *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Classifier text for one chat request, at most ``max_chars`` characters.

    ``request``: a prompt string, an OpenAI ``messages`` list, or a request body with
    ``messages``. Every turn is rendered as ``role: text`` in order, so the final turn (normally
    the user's question) comes last; when the text is longer than ``max_chars`` its *front* is
    dropped at a word boundary and marked with ``TRUNCATION_MARK``.
    """
    if max_chars < 16:
        raise ValueError(f"max_chars must be at least 16, got {max_chars}")
    turns = []
    for message in request_messages(request):
        text = _clean(message_text(message.get("content")))
        # Tool calls are part of what the model must handle even when content is empty.
        for call in message.get("tool_calls") or ():
            function = call.get("function", {}) if isinstance(call, Mapping) else {}
            text = f"{text} [tool_call {function.get('name', '')}]".strip()
        turns.append(f"{message['role']}: {text}")
    text = "\n".join(turns)
    if len(text) <= max_chars:
        return text
    tail = text[len(text) - (max_chars - len(TRUNCATION_MARK)):]
    # Start at a word boundary unless the tail is one unbroken run (code, base64...).
    space = tail.find(" ")
    if 0 <= space < len(tail) // 4:
        tail = tail[space + 1:]
    return TRUNCATION_MARK + tail


def encode_for_classifier(tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
    """Tokenize normalised texts keeping their *end*, as the classifier must.

    ``tokenizer``: a Hugging Face tokenizer. Returns its ``BatchEncoding`` (lists of ids, no
    padding); sequences longer than ``max_length`` tokens lose tokens from the left, special
    tokens kept.
    """
    previous = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        return tokenizer(list(texts), truncation=True, max_length=max_length)
    finally:
        tokenizer.truncation_side = previous
