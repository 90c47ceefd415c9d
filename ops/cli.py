"""``tier-router ab|shadow ...`` and ``tier-router monitor``: reports over the decision log.

A thin edge over :mod:`ops.ab`, :mod:`ops.shadow` and :mod:`ops.monitor`: bad input and database
errors become one line on stderr and exit code 1; reports go to stdout as JSON (and to ``--out``).
``monitor --fail-on-alert`` exits 3 when a rule fires, for a cron job or a CI gate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from ops.log_cli import _fail, _open, _time

ab_app = typer.Typer(no_args_is_help=True, help="Threshold A/B tests: compare variants.")
shadow_app = typer.Typer(no_args_is_help=True, help="Shadow challenger: agreement and would-be "
                                                    "cost and escalation.")

ConfigOption = Annotated[Path, typer.Option("--config", help="router YAML")]
DbOption = Annotated[str | None, typer.Option(
    "--db", help="decision-log SQLAlchemy URL (default: the config's decision_log.url)")]
SinceOption = Annotated[str | None, typer.Option("--since", help="ISO-8601 time with offset")]
UntilOption = Annotated[str | None, typer.Option("--until", help="ISO-8601 time with offset")]
OutOption = Annotated[Path | None, typer.Option("--out", help="also write the JSON report here")]
ModelOption = Annotated[str | None, typer.Option(
    "--model", help="classifier spec (models:/NAME@ALIAS or a bundle folder) whose fitted "
                    "thresholds / drift reference apply")]
TrackingOption = Annotated[str, typer.Option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow store for models:/ specs")]
DEFAULT_CONFIG = Path("configs/router.yaml")
DEFAULT_TRACKING = "sqlite:///mlruns/mlflow.db"
DEFAULT_RULES = Path("docs/alerts/tier-router.rules.yml")
EXIT_ALERT = 3


def _config(path: Path) -> Any:
    from router.config import load_config
    from router.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _records(config: Any, db: str | None, since: str | None, until: str | None) -> list[Any]:
    """Decision records created in [since, until), oldest first (``DecisionRecord`` list)."""
    from sqlalchemy.exc import SQLAlchemyError

    from ops.logs import LogUpkeepError, _require_head
    from router.telemetry import DecisionRecord, brief_error, window_query

    query = window_query(since=_time("--since", since) if since is not None else None,
                         until=_time("--until", until) if until is not None else None)
    engine = _open(db or config.decision_log.url, "--db")
    try:
        _require_head(engine)
        with engine.connect() as conn:
            return [DecisionRecord.from_row(row) for row in conn.execute(query).mappings()]
    except LogUpkeepError as exc:
        raise _fail(str(exc)) from None
    except SQLAlchemyError as exc:
        raise _fail(f"decision log: {brief_error(exc)}") from None
    finally:
        engine.dispose()


def _model_meta(spec: str, tracking_uri: str) -> Any:
    """The ``ClassifierMeta`` of a classifier spec (loads the bundle)."""
    from router.classifier import ClassifierError, load_classifier

    if spec.startswith("models:"):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
    try:
        return load_classifier(spec).meta
    except ClassifierError as exc:
        raise _fail(f"--model: {exc}") from None


def _plain(value: Any) -> Any:
    """``value`` with NaN as None: strict JSON (jq and friends refuse NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _emit(report: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(_plain(report), indent=2, default=str, allow_nan=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text)


@ab_app.command("report")
def ab_report(
    config: ConfigOption = DEFAULT_CONFIG, db: DbOption = None, since: SinceOption = None,
    until: UntilOption = None, out: OutOption = None,
    min_requests: Annotated[int, typer.Option(help="requests per variant before any verdict")]
    = 200,
    min_rated: Annotated[int, typer.Option(help="rated requests per variant to judge quality")]
    = 50,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples")] = 2000,
) -> None:
    """Compare the variants of a threshold A/B test: cost per task, escalation rate, quality
    (feedback), differences with 95% bootstrap intervals, and a verdict."""
    from ops.ab import compare

    router_config = _config(config)
    records = _records(router_config, db, since, until)
    order = [variant.name for variant in router_config.ab.variants]
    _emit(compare(records, order=order, min_requests=min_requests, min_rated=min_rated,
                  bootstrap=bootstrap), out)


@ab_app.command("replay")
def ab_replay(
    config: ConfigOption = DEFAULT_CONFIG, db: DbOption = None, since: SinceOption = None,
    until: UntilOption = None, out: OutOption = None, model: ModelOption = None,
    tracking_uri: TrackingOption = DEFAULT_TRACKING,
) -> None:
    """Offline: gate the logged traffic again under each variant of the config's ``ab``
    section: tier mix, gate escalation rate, estimated cost per task."""
    from ops.ab import replay
    from router.gate import resolve_point

    router_config = _config(config)
    if not router_config.ab.variants:
        raise _fail(f"{config}: ab declares no variants to replay")
    point = None
    if model is not None:
        point = resolve_point(router_config.gate, _model_meta(model, tracking_uri).operating_point)
    records = _records(router_config, db, since, until)
    try:
        _emit(replay(records, router_config.ab.variants, router_config, point), out)
    except ValueError as exc:
        raise _fail(str(exc)) from None


@shadow_app.command("report")
def shadow_report(
    config: ConfigOption = DEFAULT_CONFIG, db: DbOption = None, since: SinceOption = None,
    until: UntilOption = None, out: OutOption = None,
) -> None:
    """What the shadow challenger would have done: agreement with the live decisions,
    would-be gate escalation and estimated cost per task, live x would-be tiers."""
    from ops.shadow import report

    _emit(report(_records(_config(config), db, since, until)), out)


def monitor(
    config: ConfigOption = DEFAULT_CONFIG, db: DbOption = None, since: SinceOption = None,
    until: UntilOption = None, out: OutOption = None,
    model: Annotated[str, typer.Option(
        "--model", help="the serving classifier (its stored drift reference)")]
    = "models:/tier-classifier@champion",
    rules: Annotated[Path, typer.Option(help="Prometheus alert rules")] = DEFAULT_RULES,
    window: Annotated[int | None, typer.Option(
        help="last N decisions (default: the config's monitor.window)")] = None,
    fail_on_alert: Annotated[bool, typer.Option(
        help=f"exit {EXIT_ALERT} when a rule fires")] = False,
    tracking_uri: TrackingOption = DEFAULT_TRACKING,
) -> None:
    """Drift and health over the last window of decisions: PSI of confidence and tier mix vs
    the model's training distribution, escalation, overrides, cache hits, cost per task, and
    which alert rules fire."""
    from ops.monitor import RulesError, load_rules, report

    router_config = _config(config)
    try:
        rule_list = load_rules(rules)
    except RulesError as exc:
        raise _fail(str(exc)) from None
    meta = _model_meta(model, tracking_uri)
    if meta.reference is None:
        typer.echo(f"{model} carries no drift reference: PSIs are not computed", err=True)
    records = _records(router_config, db, since, until)
    result = report(records, meta.reference, rule_list, window or router_config.monitor.window)
    result["model"] = meta.version
    _emit(result, out)
    if fail_on_alert and result["firing"]:
        raise typer.Exit(code=EXIT_ALERT)
