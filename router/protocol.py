"""OpenAI chat-completions payloads, exactly: what the service sends back to a client.

LiteLLM's response objects carry provider extras (``provider_specific_fields``, ``citations``,
``service_tier: None``...) that OpenAI's published schema does not allow as null. These
functions keep the standard fields, with the nullability the schema gives them, so responses
and stream chunks validate against ``CreateChatCompletionResponse`` /
``CreateChatCompletionStreamResponse`` (tests check it). Routing metadata is added by the
caller under its own key, never by changing a standard field.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

# Optional fields copied when present and not null (the schema types them non-null).
_MESSAGE_EXTRAS = ("tool_calls", "function_call", "audio", "annotations")
_DELTA_FIELDS = ("role", "content", "refusal", "tool_calls", "function_call")


def _plain(value: Any) -> Any:
    """A pydantic object (LiteLLM's) or a mapping as plain JSON data."""
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return value


def _usage(usage: Any) -> dict[str, int] | None:
    usage = _plain(usage)
    if not isinstance(usage, Mapping) or usage.get("prompt_tokens") is None:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(usage.get("total_tokens") or prompt + completion)}


def _header(data: Mapping[str, Any], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {"id": str(data.get("id") or ""), "object": kind,
                           "created": int(data.get("created") or time.time()),
                           "model": str(data.get("model") or "")}
    if data.get("system_fingerprint"):
        out["system_fingerprint"] = data["system_fingerprint"]
    return out


def completion_payload(response: Any) -> dict[str, Any]:
    """A non-streamed answer (LiteLLM ``ModelResponse`` or its dict) as OpenAI's JSON."""
    data = _plain(response)
    out = _header(data, "chat.completion")
    choices = []
    for i, choice in enumerate(data.get("choices") or []):
        choice = _plain(choice)
        message = _plain(choice.get("message")) or {}
        clean = {"role": message.get("role") or "assistant",
                 "content": message.get("content"), "refusal": message.get("refusal")}
        clean.update({k: message[k] for k in _MESSAGE_EXTRAS if message.get(k)})
        choices.append({"index": int(choice.get("index", i)), "message": clean,
                        "finish_reason": choice.get("finish_reason") or "stop",
                        "logprobs": _plain(choice.get("logprobs"))})
    out["choices"] = choices
    usage = _usage(data.get("usage"))
    if usage is not None:
        out["usage"] = usage
    return out


def chunk_payload(chunk: Any) -> dict[str, Any]:
    """One stream chunk (LiteLLM ``ModelResponseStream`` or dict) as OpenAI's JSON."""
    data = _plain(chunk)
    out = _header(data, "chat.completion.chunk")
    choices = []
    for i, choice in enumerate(data.get("choices") or []):
        choice = _plain(choice)
        delta = _plain(choice.get("delta")) or {}
        clean = {"index": int(choice.get("index", i)),
                 "delta": {k: delta[k] for k in _DELTA_FIELDS if delta.get(k) is not None},
                 "finish_reason": choice.get("finish_reason")}
        if choice.get("logprobs") is not None:
            clean["logprobs"] = _plain(choice["logprobs"])
        choices.append(clean)
    out["choices"] = choices
    usage = _usage(data.get("usage"))
    if usage is not None:
        out["usage"] = usage
    return out


def cached_stream(response: Mapping[str, Any], *, include_usage: bool) -> list[dict[str, Any]]:
    """A stored (non-streamed) answer replayed as a stream: role + content, finish, [usage]."""
    full = completion_payload(response)
    head = {k: v for k, v in full.items() if k not in ("choices", "usage")}
    head["object"] = "chat.completion.chunk"
    chunks = []
    for choice in full["choices"]:
        message = choice["message"]
        delta = {"role": message["role"]}
        if message["content"] is not None:
            delta["content"] = message["content"]
        chunks.append({**head, "choices": [{"index": choice["index"], "delta": delta,
                                            "finish_reason": None}]})
        chunks.append({**head, "choices": [{"index": choice["index"], "delta": {},
                                            "finish_reason": choice["finish_reason"]}]})
    if include_usage:
        # A cache hit bills no tokens.
        chunks.append({**head, "choices": [],
                       "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})
    return chunks
