"""The documents whose parts are rendered from the router config and the code (pure core).

An operator document is hand-written prose around *rendered parts*: the text between a
``BEGIN rendered:NAME`` and an ``END rendered:NAME`` marker line, written as HTML comments in
Markdown (``<!-- BEGIN rendered:tiers -->``) and as ``#`` comments in YAML and shell files
(``# BEGIN rendered:litellm-proxy``). Only those parts are ever rewritten, so the prose can say
*why* while the figures (prices, thresholds, fallbacks, columns) come from the one place that
defines them: ``configs/router.yaml``, ``params.yaml`` and the code.

Everything here is pure: texts and parsed config in, texts out. ``ops/docs_cli.py``
(``tier-router docs render [--check]``) reads and writes the files.
"""

from __future__ import annotations

import re
import shlex
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from sqlalchemy import Table

    from router.config import Deployment, RouterConfig
    from training.params import Params

CommentStyle = Literal["html", "hash"]

_NAME = r"[A-Za-z0-9_.-]+"
_STRICT = {
    "html": re.compile(rf"^\s*<!--\s*(BEGIN|END) rendered:({_NAME})\s*-->\s*$"),
    "hash": re.compile(rf"^\s*#\s*(BEGIN|END) rendered:({_NAME})\s*$"),
}
# Any comment line that *looks* like a marker: one that fails the strict form must be an error,
# never a silently skipped part.
_LOOSE = re.compile(r"^\s*(<!--|#).*\b(BEGIN|END)\s*rendered\b")


class MarkerError(ValueError):
    """A document's markers are malformed, unbalanced, repeated, unknown or missing."""


@dataclass(frozen=True)
class RenderedPart:
    """One rendered part: ``begin``/``end`` are the 0-based line numbers of its markers."""

    name: str
    begin: int
    end: int


@dataclass(frozen=True)
class Drift:
    """A rendered part whose committed text differs from what the config renders."""

    path: str
    part: str
    expected: str
    found: str


@dataclass(frozen=True)
class DocInputs:
    """What the rendered parts are rendered from."""

    config: RouterConfig
    params: Params


def comment_style(path: str | Path) -> CommentStyle:
    """Markdown files use HTML comment markers; YAML and shell files use ``#`` comments."""
    return "html" if str(path).endswith(".md") else "hash"


def find_parts(text: str, *, source: str, style: CommentStyle) -> list[RenderedPart]:
    """The rendered parts of ``text`` in order; raises :class:`MarkerError` naming ``source``
    and the line for a malformed marker, a BEGIN without END (or the reverse), nesting, a
    mismatched END name or a repeated part name."""
    parts: list[RenderedPart] = []
    open_name: str | None = None
    open_line = 0
    for number, line in enumerate(text.splitlines()):
        match = _STRICT[style].match(line)
        if match is None:
            if _LOOSE.match(line):
                expected = ("<!-- BEGIN rendered:NAME -->" if style == "html"
                            else "# BEGIN rendered:NAME")
                raise MarkerError(f"{source}:{number + 1}: malformed marker {line.strip()!r} "
                                  f"(expected the form {expected!r})")
            continue
        kind, name = match.groups()
        if kind == "BEGIN":
            if open_name is not None:
                raise MarkerError(f"{source}:{number + 1}: BEGIN rendered:{name} inside "
                                  f"rendered:{open_name} (line {open_line + 1}), which has no "
                                  f"END rendered:{open_name} before it")
            if any(part.name == name for part in parts):
                raise MarkerError(f"{source}:{number + 1}: rendered:{name} appears twice")
            open_name, open_line = name, number
        else:
            if open_name is None:
                raise MarkerError(f"{source}:{number + 1}: END rendered:{name} without a "
                                  f"BEGIN rendered:{name} before it")
            if name != open_name:
                raise MarkerError(f"{source}:{number + 1}: END rendered:{name} closes "
                                  f"rendered:{open_name} (opened at line {open_line + 1})")
            parts.append(RenderedPart(name, open_line, number))
            open_name = None
    if open_name is not None:
        raise MarkerError(f"{source}:{open_line + 1}: BEGIN rendered:{open_name} has no "
                          f"END rendered:{open_name}")
    return parts


def _checked_parts(text: str, rendered: Mapping[str, str], *, source: str,
                   style: CommentStyle) -> list[RenderedPart]:
    """:func:`find_parts`, plus: the document holds exactly the parts its renderer knows."""
    parts = find_parts(text, source=source, style=style)
    names = {part.name for part in parts}
    unknown = sorted(names - set(rendered))
    if unknown:
        raise MarkerError(f"{source}: unknown rendered part(s) {unknown}; this document "
                          f"renders {sorted(rendered)}")
    missing = [name for name in rendered if name not in names]
    if missing:
        # Without its markers a part cannot be put back: say so instead of skipping it.
        raise MarkerError(f"{source}: rendered part(s) {missing} missing (their BEGIN/END "
                          f"markers were removed)")
    return parts


def _body(text: str) -> str:
    """A rendered part's text as it sits between its markers: ends with one newline."""
    return text.rstrip("\n") + "\n" if text.strip() else ""


def splice(text: str, rendered: Mapping[str, str], *, source: str,
           style: CommentStyle) -> str:
    """``text`` with every rendered part replaced by ``rendered[name]``; the rest unchanged."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    cursor = 0
    for part in _checked_parts(text, rendered, source=source, style=style):
        out += lines[cursor:part.begin + 1]
        out.append(_body(rendered[part.name]))
        cursor = part.end
    out += lines[cursor:]
    return "".join(out)


def drifted(text: str, rendered: Mapping[str, str], *, source: str,
            style: CommentStyle) -> list[Drift]:
    """The parts of ``text`` that differ from ``rendered``, in document order."""
    lines = text.splitlines(keepends=True)
    drifts = []
    for part in _checked_parts(text, rendered, source=source, style=style):
        found = "".join(lines[part.begin + 1:part.end])
        expected = _body(rendered[part.name])
        if found != expected:
            drifts.append(Drift(source, part.name, expected, found))
    return drifts


# --- formatting helpers ---------------------------------------------------------------------

def _cell(value: Any) -> str:
    """A Markdown table cell: ``|`` escaped (GitHub reads it as a column break even in code)."""
    return str(value).replace("|", r"\|").replace("\n", " ")


def _code(value: Any) -> str:
    # Not escaped here: _table escapes every cell once.
    return f"`{value}`"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    """A config number as it reads best: integers without ``.0``, others as short as exact."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _usd_per_million(per_token: float) -> str:
    """USD per token as USD per 1M tokens (list prices are quoted that way)."""
    per_million = per_token * 1_000_000
    return f"{per_million:.2f}" if per_million >= 0.01 or per_million == 0 else f"{per_million:.3g}"


def _setting(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_setting(item) for item in value) + "]"
    return str(value)


def _field_rows(section: Any, notes: Mapping[str, str]) -> list[list[str]]:
    """Every field of a config section, in declaration order: name, value, what it does."""
    return [[_code(name), _code(_setting(getattr(section, name))), notes.get(name, "")]
            for name in type(section).model_fields]


# --- blueprint ------------------------------------------------------------------------------

def _deployment_id(deployment: Deployment) -> str:
    # router.dispatch names a deployment without model_info.id by its provider/model key.
    return deployment.model_info.id or deployment.key


def render_tier_table(config: RouterConfig) -> str:
    """Tier -> deployments in config order, with provider, model and prices per 1M tokens."""
    from router.tiers import TIERS

    rows = []
    for tier in TIERS:
        for order, deployment in enumerate(config.deployments(tier), start=1):
            params = deployment.litellm_params
            rows.append([f"`{tier}`", order, _code(_deployment_id(deployment)),
                         deployment.provider, _code(deployment.served_model),
                         _usd_per_million(params.input_cost_per_token),
                         _usd_per_million(params.output_cost_per_token)])
    return _table(["tier", "#", "deployment id", "provider", "model", "USD / 1M input",
                   "USD / 1M output"], rows)


def render_fallback_matrix(config: RouterConfig) -> str:
    """Per tier: same-tier fallbacks in order, then what a whole-tier failure does
    (router.dispatch), followed by the ``router_settings`` LiteLLM runs with."""
    from router.tiers import TIERS, next_tier_up

    rows = []
    for tier in TIERS:
        chain = " → ".join(_code(_deployment_id(d)) for d in config.deployments(tier))
        above: list[str] = []
        step = next_tier_up(tier)
        while step is not None:
            above.append(step)
            step = next_tier_up(step)
        if above:
            down = (f"next tier up: `{above[0]}` answers (a `tier` fallback is recorded with "
                    f"the reason)")
            for higher in above[1:]:
                down += f"; if it is down too, `{higher}`"
            down += f"; with `{above[-1]}` down as well: HTTP 503"
        else:
            # router.dispatch: next_tier_up(critical) is None, so the loop raises DispatchError.
            down = ("nowhere higher: `DispatchError`, HTTP 503 (`no deployment could answer`); "
                    "the decision is still recorded, `status` `error`")
        rows.append([f"`{tier}`", chain, down])
    settings = config.router_settings
    setting_rows = [
        ["`num_retries`", _setting(settings.num_retries),
         "retries of the tier's group call after the first try (LiteLLM picks a deployment for "
         "each try)"],
        ["`timeout`", f"{_setting(settings.timeout)} s", "per call; a timed-out call counts as "
                                                         "a failure of that deployment"],
        ["`allowed_fails`", _setting(settings.allowed_fails),
         "failures of one deployment within a minute before LiteLLM cools it down"],
        ["`cooldown_time`", f"{_setting(settings.cooldown_time)} s",
         "how long a cooled-down deployment gets no traffic"],
        ["`retry_after`", f"{_setting(settings.retry_after)} s", "least wait before a retry"],
        ["`routing_strategy`", _code(settings.routing_strategy),
         "how LiteLLM picks a deployment of the group for each try"],
    ]
    return (_table(["tier", "same-tier fallbacks, in order", "every deployment of the tier "
                    "down"], rows)
            + "\n`router_settings` (passed to `litellm.Router`):\n\n"
            + _table(["setting", "value", "what it does"], setting_rows))


# What each knob of the decision's operating point does (router.gate); a GateConfig field added
# without a note here renders with its value only: add the note.
_GATE_NOTES = {
    "price_weight": "lambda, quality per USD: the rule chooses the allowed tier maximising "
                    "P(acceptable) - lambda x the request's expected USD there (0: the likeliest "
                    "answer whatever it costs)",
    "escalate_threshold": "confidence (P of the chosen tier) below it: **escalate** (unless a "
                          "cascade is worth more) to the cheapest allowed tier above whose P "
                          "reaches `trust_threshold`, else `critical`",
    "trust_threshold": "the P an escalation target must reach; without check statistics (a "
                       "classifier with no neighbourhood table, e.g. vLLM), confidence from "
                       "`escalate_threshold` up to it **cascades** the chosen tier",
    "score_threshold": "an answer the response scorer rates below it fails its check (band "
                       "cascades, and every check after a cascade's first)",
    "escalation_weight": "mu: quality a cascade must gain per expected escalation (a failed "
                         "check's second call costs latency the rule does not otherwise see)",
}


def render_overrides(config: RouterConfig) -> str:
    """The domain override rules and the defaults of the decision's operating point."""
    overrides = config.overrides
    state = "on" if overrides.enabled else "**off** (`overrides.enabled: false`)"
    rows = [[_code(rule.name), rule.domain, f"`{rule.tier}`",
             ", ".join(rule.keywords) or "(none)",
             "<br>".join(_code(pattern) for pattern in rule.patterns) or "(none)"]
            for rule in overrides.rules]
    return (f"Overrides are {state}; the first rule that matches wins.\n\n"
            + (_table(["rule", "domain", "tier", "keywords (whole words, any case)",
                       "patterns (regular expressions, any case)"], rows)
               if rows else "No rules are configured.\n")
            + "\nOperating-point defaults (`gate`):\n\n"
            + _table(["setting", "default", "what it does"],
                     _field_rows(config.gate, _GATE_NOTES)))


_CASCADE_NOTES = {
    "enabled": "cascade where the decision values checking a cheaper tier's answer above "
               "routing (off: such a request is dispatched to the tier it would have checked, "
               "unchecked)",
    "max_calls": "most tier calls per request; after a failed check the rule chooses among the "
                 "allowed tiers above the one that answered",
    "latency_budget_ms": "a request whose budget a cascade would overrun (its first call plus a "
                         "frontier call, at the tiers' recent latencies) is not cascaded",
    "latency_budget_header": "request header carrying a per-request latency budget",
}
_CACHE_NOTES = {
    "enabled": "consult the cache at all",
    "backend": "`embedded` (in-process faiss, one per replica) or `chroma` (a shared server)",
    "path": "where the embedded cache persists",
    "url": "the Chroma server shared by the replicas",
    "ttl_s": "entry lifetime, seconds",
    "max_entries": "size bound (oldest evicted first)",
    "similarity_threshold": "least cosine for a semantic hit",
    "min_margin": "a hit must beat the nearest entry holding a different answer by this",
    "min_support": "nearest entries that must hold the served answer",
    "neighbours": "entries the agreement test looks at",
}


def render_cascade_cache(config: RouterConfig) -> str:
    """The cascade and cache sections, every field with its value."""
    return ("Cascade (`cascade`):\n\n"
            + _table(["setting", "value", "what it does"],
                     _field_rows(config.cascade, _CASCADE_NOTES))
            + "\nSemantic cache (`cache`):\n\n"
            + _table(["setting", "value", "what it does"],
                     _field_rows(config.cache, _CACHE_NOTES)))


def blueprint_parts(inputs: DocInputs) -> dict[str, str]:
    """``docs/blueprint.md``'s rendered parts."""
    config = inputs.config
    return {"tiers": render_tier_table(config),
            "fallbacks": render_fallback_matrix(config),
            "overrides": render_overrides(config),
            "cascade-cache": render_cascade_cache(config)}


# --- rollout checklist ----------------------------------------------------------------------

# What each decision-log column records (router.telemetry.DecisionRecord says the same in code).
# A column added there without a note here renders with its type only: add the note.
_COLUMN_NOTES = {
    "id": "row number",
    "request_id": "the request's id (also in the `x-router-request-id` header)",
    "tenant": "who sent it (from the API key)",
    "text_hash": "sha256 of the normalised request text",
    "requested_model": "`auto`, a tier or a pinned model id",
    "created_at": "when (UTC)",
    "text": "the normalised request text, as `decision_log.prompts` keeps it (harvest trains "
            "on it)",
    "scores": "per tier, the calibrated P(that tier's answer is acceptable)",
    "predicted_tier": "the tier the decision rule chose (before the gate and any cascade)",
    "confidence": "P of that tier",
    "gate_action": "`route` / `cascade` / `escalate` (null: override or pin)",
    "override_rule": "the domain rule that fired",
    "override_domain": "its domain",
    "pinned": "the request named a tier or model",
    "target_tier": "where the decision sent it first (a cascade: the tier whose answer it "
                   "checks)",
    "thresholds": "the operating point applied ({point})",
    "threshold_source": "`config`, `model:<version>` or `ab:<variant>`",
    "deployments_tried": "deployments called, in order, failed ones included",
    "fallbacks": "each same-tier (`deployment`) or next-tier (`tier`) fallback, with its "
                 "reason",
    "final_tier": "the tier that answered",
    "final_model": "the deployment that answered",
    "prompt_tokens": "input tokens billed",
    "completion_tokens": "output tokens billed",
    "cost_usd": "cost of the request, every call included",
    "latency_ms": "per step: normalise, override, classify, gate, dispatch, total",
    "status": "`ok` or `error`",
    "error": "what failed",
    "model_version": "classifier version that scored it",
    "cache_status": "`miss` / `exact` / `semantic` (null: not consulted)",
    "cache_similarity": "cosine of a semantic hit",
    "feedback": "the user's `/v1/feedback`, for the next harvest",
    "extra": "further fields: the expected USD per tier (`expected_cost_usd`) and the allowed "
             "tiers the rule weighed, the neighbourhood (\"requests like this\"), cascade "
             "steps (tier, score, threshold, failed, cost), the matched override text, the "
             "classifier source, the cache entry, a failure's HTTP status...",
    "variant": "the A/B variant the request was assigned (config `ab`), null outside a test",
    "shadow": "what the shadow challenger would have done: its scores, gate action, target "
              "tier, agreement, estimated cost",
}


def render_decision_columns(table: Table) -> str:
    """The ``decisions`` table's columns: name, SQL type, NULL allowed, what it records."""
    from router.config import GateConfig
    from router.gate import config_point

    point = ", ".join(_code(knob) for knob in config_point(GateConfig()).as_dict())
    rows = []
    for column in table.columns:
        note = column.comment or _COLUMN_NOTES.get(column.name, "").format(point=point)
        rows.append([_code(column.name), type(column.type).__name__.removeprefix("_"),
                     "yes" if column.nullable else "no", note])
    return _table(["column", "type", "null", "records"], rows)


def render_ab(config: RouterConfig) -> str:
    """The ``ab`` section: the switch, the split and each variant's share and operating point
    (a variant's ``gate`` is a whole :class:`router.config.GateConfig`: the knobs it leaves out
    take their defaults)."""
    from router.config import GateConfig

    ab = config.ab
    total = sum(variant.weight for variant in ab.variants) or 1.0
    head = (f"- `enabled`: `{_setting(ab.enabled)}`"
            + ("" if ab.enabled else " (the test is off: every request uses the model's or the "
                                     "config's operating point)") + "\n"
            f"- `split_by`: `{ab.split_by}` ("
            + ("a tenant always sees the same variant" if ab.split_by == "tenant"
               else "each request is assigned on its own")
            + ")\n"
            f"- `salt`: `{ab.salt}` (change it to reshuffle the assignment)\n")
    if not ab.variants:
        return head + "- no variants configured\n"
    knobs = list(GateConfig.model_fields)
    rows = []
    for variant in ab.variants:
        values = (["fitted with the model"] * len(knobs) if variant.gate is None
                  else [_setting(getattr(variant.gate, knob)) for knob in knobs])
        rows.append([_code(variant.name), _number(variant.weight),
                     f"{variant.weight / total:.0%}", *values])
    return head + "\n" + _table(["variant", "weight", "share", *knobs], rows)


def render_monitor(config: RouterConfig) -> str:
    """The ``monitor`` section (the window the drift and rate gauges cover)."""
    monitor = config.monitor
    return (f"- `monitor.window`: {monitor.window} decisions (the gauges on `/metrics` cover the "
            f"last {monitor.window})\n"
            f"- `monitor.min_requests`: {monitor.min_requests} (fewer decisions in the window: "
            f"the gauges read NaN rather than a noisy rate)\n")


def render_harvest(params: Params) -> str:
    """The harvest window and labeller from ``params.yaml``: what the next retrain reads."""
    harvest, label = params.harvest, params.label
    return (f"- `harvest.log_url`: `{harvest.log_url}`\n"
            f"- `harvest.since` / `harvest.until`: `{harvest.since}` to `{harvest.until}` "
            f"(a fixed snapshot; move it to take fresh traffic)\n"
            f"- `harvest.min_log_rows`: {harvest.min_log_rows} (fewer usable rows: the seed "
            f"workloads {', '.join(harvest.bootstrap)} are added)\n"
            f"- `label.labeller`: `{label.labeller}` (logged traffic has no recorded outcomes: "
            f"`outcomes` leaves it unlabelled, `judge` labels it within "
            f"`label.judge.budget_usd` = {_number(label.judge.budget_usd)} USD)\n")


def rollout_parts(inputs: DocInputs) -> dict[str, str]:
    """``docs/rollout-checklist.md``'s rendered parts."""
    from router.telemetry import decisions

    return {"decision-columns": render_decision_columns(decisions),
            "ab": render_ab(inputs.config),
            "monitor": render_monitor(inputs.config),
            "harvest": render_harvest(inputs.params)}


# --- configuration templates ----------------------------------------------------------------

def render_litellm_proxy(config: RouterConfig) -> str:
    """A LiteLLM proxy config serving the router's own ``model_list`` and ``router_settings``
    (bench.load's, with the master key read from the proxy's environment)."""
    import yaml

    from bench.load import proxy_settings

    settings = proxy_settings(config, master_key="os.environ/LITELLM_MASTER_KEY")
    return yaml.safe_dump(settings, sort_keys=False, allow_unicode=True, width=100)


# serving.vllm.serve_command placeholders, shown as shell variables in the script.
_PYTHON, _MODEL = "@PYTHON@", "@MODEL_DIR@"
_SHELL_VARIABLES = {_PYTHON: '"$VLLM_PYTHON"', _MODEL: '"$MODEL_DIR"'}


def _shell_line(command: Sequence[str], env: Mapping[str, str]) -> str:
    """``exec [env K=V ...] command`` with the placeholders as quoted shell variables, the
    ``--port`` value as ``"$PORT"``, one option (with its value) per continued line."""
    words = []
    for index, word in enumerate(command):
        if index and command[index - 1] == "--port":
            words.append('"$PORT"')
        else:
            words.append(_SHELL_VARIABLES.get(word) or shlex.quote(word))
    head = ["exec", *(["env", *(f"{key}={shlex.quote(value)}" for key, value in env.items())]
                      if env else [])]
    # The interpreter and its module stay on the first line; each --option starts a new one.
    lines = [" ".join([*head, *words[:3]])]
    for word in words[3:]:
        if word.startswith("--"):
            lines.append(word)
        else:
            lines[-1] += " " + word
    return "    " + " \\\n        ".join(lines) + "\n"


def render_vllm(device: Literal["cpu", "gpu"]) -> str:
    """The vLLM serve command of ``python -m serving.vllm`` for ``device``: the same
    :func:`serving.vllm.serve_command`, bound to this machine on CPU, to every interface on a
    GPU server (it sits behind the router's replicas there)."""
    from serving.vllm import CPU_ENV, serve_command

    host = "127.0.0.1" if device == "cpu" else "0.0.0.0"
    command = serve_command(_PYTHON, Path(_MODEL), host=host)
    return _shell_line(command, CPU_ENV if device == "cpu" else {})


def _choices(model: Any, field: str) -> tuple[Any, ...]:
    """The allowed values of a ``Literal`` params field (empty when it is not one)."""
    annotation = model.model_fields[field].annotation
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _allowed(model: Any, field: str) -> str:
    """What a params field accepts, read from its type: the choices of a ``Literal`` (or of a
    list of them), or a number / list of numbers with the field's bounds."""
    info = model.model_fields[field]
    annotation = info.annotation
    choices = _choices(model, field)
    if choices:
        return ", ".join(_code(c) for c in choices)
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if typing.get_origin(item) is Literal:
            return "list of " + ", ".join(_code(c) for c in typing.get_args(item))
        return "list of " + ("integers" if item is int else "numbers" if item is float
                             else "texts")
    kind = {int: "integer", float: "number"}.get(annotation, "text")
    bounds = [f"{symbol} {_number(getattr(rule, name))}" for rule in info.metadata
              for name, symbol in _BOUNDS if getattr(rule, name, None) is not None]
    return kind + (f" {', '.join(bounds)}" if bounds else "")


# calibrate's params that do not steer the fit (inputs and the drift reference's sample).
_NOT_FIT_KNOBS = ("router_config", "reference_rows", "reference_seed")
# The other stages' params that change what calibrate fits.
_OTHER_FIT_KNOBS = (("train", "head"), ("scorer", "encoder"), ("scorer", "regularisation"),
                    ("scorer", "calibration"))


def _scorer_encoders() -> tuple[str, ...]:
    from training.scorer import DEFAULT_CHOICES

    return DEFAULT_CHOICES


def render_calibration_params(params: Params) -> str:
    """The params that steer the fitted operating point: every ``calibrate`` knob (the inputs
    and the drift reference's sample aside) and the train / scorer params feeding it, with
    their current values and what they accept."""
    knobs = [("calibrate", name) for name in type(params.calibrate).model_fields
             if name not in _NOT_FIT_KNOBS] + list(_OTHER_FIT_KNOBS)
    rows = []
    for section_name, field in knobs:
        section = getattr(params, section_name)
        allowed = _allowed(type(section), field)
        if (section_name, field) == ("scorer", "encoder"):  # a str: kinds or a model path
            allowed = ", ".join(_code(c) for c in _scorer_encoders()) + " or an encoder path"
        rows.append([_code(f"{section_name}.{field}"), _code(_setting(getattr(section, field))),
                     allowed])
    return _table(["param (`params.yaml`)", "current", "allowed"], rows)


def _others(params: Params, section_name: str, field: str,
            choices: Sequence[Any] | None = None) -> list[str]:
    """``dvc exp run -S`` lines for each value of a field other than its current one."""
    current = getattr(getattr(params, section_name), field)
    values = choices if choices is not None else _choices(
        type(getattr(params, section_name)), field)
    return [f"dvc exp run -S {section_name}.{field}={value}" for value in values
            if value != current]


def render_calibration_commands(params: Params) -> str:
    """``dvc exp run -S`` lines for each objective of the operating point's fit, at the current
    targets (so a run can be compared with the committed fit), and for the other backends,
    heads and scorer encoders."""
    calibrate = params.calibrate
    escalation = f"-S calibrate.max_escalation={_number(calibrate.max_escalation)}"
    lines = [
        "# the operating point (price weight, trust, escalate, score threshold, escalation",
        "# weight), fitted together on a validation replay of the whole policy: the cheapest",
        "# point reaching quality_target x frontier-only quality, escalating at most",
        "# max_escalation of requests (gate and cascade together)",
        f"dvc exp run -S calibrate.objective=min_cost "
        f"-S calibrate.quality_target={_number(calibrate.quality_target)} {escalation}",
        "# ... or the best quality costing at most cost_budget x frontier-only cost",
        f"dvc exp run -S calibrate.objective=max_quality "
        f"-S calibrate.cost_budget={_number(calibrate.cost_budget)} {escalation}",
        "# the other classifier backend",
        *_others(params, "calibrate", "backend"),
        "# the fine-tuned backbone's other head (retrains: the train stage onwards)",
        *_others(params, "train", "head"),
        "# the response scorer's other encoders (what the cascade's checks read)",
        *_others(params, "scorer", "encoder", _scorer_encoders()),
        "# compare the experiments' fitted operating points and metrics",
        "dvc exp show --only-changed",
    ]
    return "```bash\n" + "\n".join(lines) + "\n```\n"


def render_cache_fit(config: RouterConfig) -> str:
    """The cache knobs in the config now, and the command that refits them."""
    cache = config.cache
    return ("Now in `configs/router.yaml`: "
            f"`cache.similarity_threshold` {_number(cache.similarity_threshold)}, "
            f"`cache.min_margin` {_number(cache.min_margin)}, "
            f"`cache.min_support` {cache.min_support} "
            f"(`cache.neighbours` {cache.neighbours}).\n\n"
            "```bash\n"
            "tier-router bench --workload paraphrase --out docs/benchmarks/paraphrase.json\n"
            "```\n")


def calibration_parts(inputs: DocInputs) -> dict[str, str]:
    """``configs/templates/calibration.md``'s rendered parts."""
    return {"calibration-params": render_calibration_params(inputs.params),
            "calibration-commands": render_calibration_commands(inputs.params),
            "cache-fit": render_cache_fit(inputs.config)}


DOCUMENTS: dict[str, Callable[[DocInputs], dict[str, str]]] = {
    "docs/blueprint.md": blueprint_parts,
    "docs/rollout-checklist.md": rollout_parts,
    "configs/templates/litellm_proxy.yaml":
        lambda inputs: {"litellm-proxy": render_litellm_proxy(inputs.config)},
    "configs/templates/vllm_serve.sh":
        lambda inputs: {"vllm-cpu": render_vllm("cpu"), "vllm-gpu": render_vllm("gpu")},
    "configs/templates/calibration.md": calibration_parts,
}
"""Every document with rendered parts (paths relative to the repository root), and the function
rendering its parts."""


def render_documents(texts: Mapping[str, str], inputs: DocInputs) -> dict[str, str]:
    """Each document of ``texts`` (path -> text) with its rendered parts rewritten."""
    return {path: splice(text, DOCUMENTS[path](inputs), source=path,
                         style=comment_style(path))
            for path, text in texts.items()}


def check_documents(texts: Mapping[str, str], inputs: DocInputs) -> list[Drift]:
    """Every rendered part of ``texts`` that differs from what ``inputs`` render."""
    drifts: list[Drift] = []
    for path, text in texts.items():
        drifts += drifted(text, DOCUMENTS[path](inputs), source=path, style=comment_style(path))
    return drifts


def document_paths() -> list[PurePosixPath]:
    """The documents with rendered parts, relative to the repository root."""
    return [PurePosixPath(path) for path in DOCUMENTS]
