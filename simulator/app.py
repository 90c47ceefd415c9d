"""Provider simulator: a STAND-IN for hosted LLM providers, which cannot be reached here.

It speaks OpenAI's chat-completions protocol, one simulated provider per path prefix, so that
LiteLLM and the official ``openai`` client talk to it exactly as to a real provider:

* ``POST /p/<provider>/v1/chat/completions`` (plain and ``stream=true``, SSE)
* ``GET  /p/<provider>/v1/models``
* ``GET  /eval/completions/<id>``: the evaluation lookup (recorded correctness of an answer it
  gave). Only evaluation code calls it; the router never does.
* ``GET|PUT /sim/failures``: read or change failure injection while running.
* ``GET /healthz``

The deployments it serves are the config's ``model_list`` entries whose ``api_base`` has the
``/p/<provider>/`` form. Answers, tokens and latency: see catalog.py, tokens.py and latency.py. A
request carrying the labelling judge's rubric is answered by the judge stand-in (judge.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.config import Deployment, RouterConfig
from router.errors import RequestFormatError
from router.normalise import message_text
from router.tokens import count_prompt_tokens, count_tokens, truncate_to_tokens
from simulator.catalog import Answer, AnswerCatalog
from simulator.judge import DEFAULT_INVALID_RATE, is_judge_request, judge_answer
from simulator.latency import profile_for, simulate_latency

logger = logging.getLogger(__name__)

_FAIL_SPEC = re.compile(
    r"^(?P<key>[^=]+/[^=]+)=(?:(?P<rate>[0-9.]+)|(?P<kind>timeout|midstream)"
    r"(?::(?P<trate>[0-9.]+))?)$")


class SimulatorError(ValueError):
    """Bad simulator settings (an unknown deployment in --fail, a malformed spec)."""


@dataclass(frozen=True)
class FailMode:
    """Inject failures into one deployment: HTTP 500 (``error``), a hang (``timeout``), or a
    stream that breaks after its first content chunks (``midstream``: the connection drops
    without the stream's end; plain calls answer normally).

    ``rate`` is the share of calls that fail, drawn from a seeded generator: 1.0 = hard down.
    """

    kind: Literal["error", "timeout", "midstream"]
    rate: float


def parse_fail_spec(spec: str) -> tuple[str, FailMode]:
    """``provider/model=RATE`` (HTTP 500 at RATE), ``provider/model=timeout[:RATE]`` or
    ``provider/model=midstream[:RATE]``."""
    match = _FAIL_SPEC.match(spec.strip())
    if not match:
        raise SimulatorError(f"--fail {spec!r}: expected PROVIDER/MODEL=RATE or "
                             "PROVIDER/MODEL=timeout|midstream[:RATE], e.g. "
                             "openai/gpt-4-1106-preview=1.0")
    rate_text = match["rate"] if match["rate"] is not None else (match["trate"] or "1.0")
    try:
        rate = float(rate_text)
    except ValueError:
        raise SimulatorError(f"--fail {spec!r}: rate {rate_text!r} is not a number") from None
    if not 0.0 <= rate <= 1.0:
        raise SimulatorError(f"--fail {spec!r}: rate must be between 0 and 1")
    return match["key"], FailMode("error" if match["rate"] is not None else match["kind"], rate)


class _ChatBody(BaseModel):
    """The fields of a chat-completions request that the simulator reads; others are accepted."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=8)


def _error(status: int, message: str, kind: str, code: str | None = None,
           param: str | None = None) -> JSONResponse:
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return JSONResponse(status_code=status, content={
        "error": {"message": message, "type": kind, "param": param, "code": code}})


class Simulator:
    """State of one simulator process: deployments, catalog, failure plan, evaluation lookup."""

    def __init__(self, config: RouterConfig, catalog: AnswerCatalog, *,
                 failures: dict[str, FailMode] | None = None, latency_scale: float = 1.0,
                 hang_s: float = 120.0, seed: int = 0, lookup_size: int = 200_000,
                 judge_invalid_rate: float = DEFAULT_INVALID_RATE) -> None:
        self.deployments: dict[tuple[str, str], Deployment] = {}
        for deployment in config.model_list:
            if "/p/" in (deployment.litellm_params.api_base or ""):
                self.deployments[(deployment.provider, deployment.served_model)] = deployment
        if not self.deployments:
            raise SimulatorError("the config has no deployment whose api_base has the "
                                 "/p/<provider>/v1 form, so there is nothing to simulate")
        self.catalog = catalog
        self.latency_scale = latency_scale  # 0 = answer at once; 1 = modelled latency
        self.hang_s = hang_s  # seconds a 'timeout' failure holds the call before a 504
        self.seed = seed
        self.judge_invalid_rate = judge_invalid_rate  # share of judge answers that are not JSON
        self.failures: dict[str, FailMode] = {}
        self._rngs: dict[str, random.Random] = {}
        self.set_failures(failures or {})
        self._lookup: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lookup_size = lookup_size

    @property
    def keys(self) -> list[str]:
        return sorted(d.key for d in self.deployments.values())

    def set_failures(self, failures: dict[str, FailMode]) -> None:
        unknown = sorted(set(failures) - set(self.keys))
        if unknown:
            raise SimulatorError(f"--fail names unknown deployment(s) {unknown}; "
                                 f"known: {self.keys}")
        self.failures = dict(failures)
        self._rngs = {key: random.Random(f"{self.seed}|{key}") for key in failures}

    def should_fail(self, key: str) -> FailMode | None:
        mode = self.failures.get(key)
        if mode is None or mode.rate <= 0.0:
            return None
        return mode if self._rngs[key].random() < mode.rate else None

    def remember(self, completion_id: str, record: dict[str, Any]) -> None:
        self._lookup[completion_id] = record
        while len(self._lookup) > self._lookup_size:
            self._lookup.popitem(last=False)

    def lookup(self, completion_id: str) -> dict[str, Any] | None:
        return self._lookup.get(completion_id)


def _eval_record(completion_id: str, deployment: Deployment, answer: Answer) -> dict[str, Any]:
    outcome = answer.outcome
    return {
        "completion_id": completion_id,
        "deployment": deployment.key,
        "tier": deployment.model_name,
        "answer_kind": answer.kind,
        "workload": answer.workload,
        "record_id": answer.record_id,
        "recorded_model": answer.recorded_model,
        "recorded_correct": outcome.correct if outcome else None,
        "recorded_score": outcome.score if outcome else None,
        "recorded_cost_usd": outcome.cost_usd if outcome else None,
    }


def create_app(sim: Simulator) -> FastAPI:
    """The ASGI app serving ``sim``."""
    app = FastAPI(title="tier-router provider simulator (stand-in for hosted providers)",
                  docs_url=None, redoc_url=None)
    app.state.simulator = sim

    def deployment_or_error(provider: str, model: str) -> Deployment | JSONResponse:
        if not any(p == provider for p, _ in sim.deployments):
            return _error(404, f"Unknown provider {provider!r}", "invalid_request_error",
                          "provider_not_found")
        deployment = sim.deployments.get((provider, model))
        if deployment is None:
            return _error(404, f"The model {model!r} does not exist at provider {provider!r}",
                          "invalid_request_error", "model_not_found", "model")
        return deployment

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "deployments": sim.keys, "known_prompts": len(sim.catalog)}

    @app.get("/p/{provider}/v1/models", response_model=None)
    async def list_models(provider: str) -> dict[str, Any] | JSONResponse:
        models = [m for p, m in sim.deployments if p == provider]
        if not models:
            return _error(404, f"Unknown provider {provider!r}", "invalid_request_error",
                          "provider_not_found")
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": provider} for m in models]}

    @app.post("/p/{provider}/v1/chat/completions", response_model=None)
    async def chat_completions(provider: str, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            return _error(401, "Missing API key: send 'Authorization: Bearer <key>'",
                          "invalid_request_error", "invalid_api_key")
        try:
            body = _ChatBody.model_validate(await request.json())
        except json.JSONDecodeError:
            return _error(400, "Request body is not valid JSON", "invalid_request_error")
        except ValidationError as exc:
            first = exc.errors()[0]
            return _error(400, f"{first['msg']}", "invalid_request_error",
                          param=".".join(str(p) for p in first["loc"]))
        deployment = deployment_or_error(provider, body.model)
        if isinstance(deployment, JSONResponse):
            return deployment
        try:
            turns = [message_text(m.get("content")) for m in body.messages
                     if m.get("role") == "user"]
            contents = [message_text(m.get("content")) for m in body.messages]
        except RequestFormatError as exc:
            return _error(400, str(exc), "invalid_request_error", param="messages")
        if not turns:
            return _error(400, "messages must include a user message", "invalid_request_error",
                          param="messages")

        failure = sim.should_fail(deployment.key)
        if failure is not None and failure.kind == "timeout":
            await asyncio.sleep(sim.hang_s)
            return _error(504, "Simulated provider timeout", "server_error", "timeout")
        if failure is not None and failure.kind == "error":
            return _error(500, f"Simulated provider failure at {deployment.key}",
                          "server_error", "simulated_failure")
        break_after = 2 if failure is not None and failure.kind == "midstream" else None

        if is_judge_request(body.messages):  # the labelling judge's stand-in (judge.py)
            answer = judge_answer(sim.catalog, body.messages, seed=sim.seed,
                                  invalid_rate=sim.judge_invalid_rate)
        else:
            answer = sim.catalog.answer(turns, deployment.served_model, deployment.model_name,
                                        deployment.model_info.recorded_model)
        text, finish_reason = answer.text, "stop"
        limit = body.max_completion_tokens or body.max_tokens
        completion_tokens = count_tokens(text)
        if limit is not None and completion_tokens > limit:
            text, finish_reason = truncate_to_tokens(text, limit), "length"
            completion_tokens = limit
        usage = {"prompt_tokens": count_prompt_tokens(contents),
                 "completion_tokens": completion_tokens * body.n,
                 "total_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        completion_id = f"chatcmpl-sim-{uuid.uuid4().hex}"
        latency = simulate_latency(deployment.served_model, completion_tokens,
                                   seed=f"{sim.seed}|{deployment.key}|{turns[-1]}")
        sim.remember(completion_id, {**_eval_record(completion_id, deployment, answer),
                                     # unscaled, so benchmarks can run with --latency-scale 0
                                     "modelled_latency_ms": latency.total_ms})
        headers = {"x-simulator-answer": answer.kind,
                   "x-simulator-latency-ms": f"{latency.total_ms * sim.latency_scale:.1f}"}
        created = int(time.time())
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                _stream(sim, completion_id, created, body.model, text, body.n, finish_reason,
                        usage if include_usage else None, latency.ttft_ms,
                        profile_for(deployment.served_model).ms_per_token, break_after),
                media_type="text/event-stream", headers=headers)
        await asyncio.sleep(latency.total_ms * sim.latency_scale / 1000)
        return JSONResponse(headers=headers, content={
            "id": completion_id, "object": "chat.completion", "created": created,
            "model": body.model,
            "choices": [{"index": i, "finish_reason": finish_reason, "logprobs": None,
                         "message": {"role": "assistant", "content": text, "refusal": None}}
                        for i in range(body.n)],
            "usage": usage})

    @app.get("/eval/completions/{completion_id}", response_model=None)
    async def evaluation_lookup(completion_id: str) -> dict[str, Any] | JSONResponse:
        record = sim.lookup(completion_id)
        if record is None:
            return _error(404, f"No completion {completion_id!r} (unknown or evicted)",
                          "invalid_request_error", "completion_not_found")
        return record

    @app.get("/sim/failures")
    async def get_failures() -> dict[str, Any]:
        return {key: asdict(mode) for key, mode in sim.failures.items()}

    @app.put("/sim/failures", response_model=None)
    async def put_failures(request: Request) -> dict[str, Any] | JSONResponse:
        """Replace the failure plan: ``{"specs": ["provider/model=1.0", ...]}`` ([] clears)."""
        try:
            specs = (await request.json())["specs"]
            sim.set_failures(dict(parse_fail_spec(spec) for spec in specs))
        except (json.JSONDecodeError, KeyError, TypeError, SimulatorError) as exc:
            return _error(400, f"expected {{'specs': [...]}} of --fail specs: {exc}",
                          "invalid_request_error")
        logger.info("failure plan now %s", sim.failures)
        return {key: asdict(mode) for key, mode in sim.failures.items()}

    return app


async def _stream(sim: Simulator, completion_id: str, created: int, model: str, text: str,
                  n: int, finish_reason: str, usage: dict[str, int] | None, ttft_ms: float,
                  ms_per_token: float, break_after: int | None = None) -> AsyncIterator[str]:
    """SSE chunks of ``chat.completion.chunk``: role, content pieces, finish, [usage], [DONE].
    ``break_after``: drop the connection after that many content chunks (a provider failing
    mid-stream)."""
    scale = sim.latency_scale / 1000

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                   "model": model, "choices": choices, **extra}
        return f"data: {json.dumps(payload)}\n\n"

    await asyncio.sleep(ttft_ms * scale)
    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                  "finish_reason": None, "logprobs": None} for i in range(n)])
    for sent, piece in enumerate(re.findall(r"\s*\S+\s*", text) or [text]):
        if break_after is not None and sent >= break_after:
            raise ConnectionAbortedError("simulated provider failure mid-stream")
        await asyncio.sleep(count_tokens(piece) * ms_per_token * scale)
        yield chunk([{"index": i, "delta": {"content": piece}, "finish_reason": None,
                      "logprobs": None} for i in range(n)])
    yield chunk([{"index": i, "delta": {}, "finish_reason": finish_reason, "logprobs": None}
                 for i in range(n)])
    if usage is not None:
        yield chunk([], usage=usage)
    yield "data: [DONE]\n\n"


class BackgroundServer:
    """An ASGI app served by uvicorn on 127.0.0.1 in a daemon thread (a real HTTP server).

    For commands that need a simulator of their own (``tier-router bench``). ``url`` is its root.
    """

    def __init__(self, app: FastAPI, port: int = 0, host: str = "127.0.0.1") -> None:
        import socket
        import threading

        import uvicorn

        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                                     log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True,
                                        name=f"simulator:{port}")

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30  # seconds
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise SimulatorError(f"the simulator did not start on {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
