"""``tier-router``: the command line. A thin edge: domain errors become exit codes here.

Exit codes: 0 ok, 1 invalid input (config, workload, arguments), 2 usage error (typer's own).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from router.config import load_config
from router.errors import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Confidence-gated LLM router: config checks, provider simulator, replay.")
logger = logging.getLogger("tier_router")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code=1)


@app.command("check-config")
def check_config(file: Annotated[Path, typer.Argument(help="router YAML file")]) -> None:
    """Validate a router config; on error name the file, each bad field and what is wrong."""
    try:
        config = load_config(file)
    except ConfigError as exc:
        raise _fail(f"invalid config:\n{exc}") from None
    tiers = {d.model_name for d in config.model_list}
    typer.echo(f"{file}: ok ({len(config.model_list)} deployments over {len(tiers)} tiers)")


@app.command()
def simulate(
    config: Annotated[Path, typer.Option(help="router YAML whose deployments to simulate")],
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8900,
    host: Annotated[str, typer.Option(help="bind address; keep it on loopback")] = "127.0.0.1",
    fail: Annotated[list[str] | None, typer.Option(
        help="PROVIDER/MODEL=RATE (HTTP 500 at RATE, 1.0 = hard down) or "
             "PROVIDER/MODEL=timeout[:RATE]; repeatable")] = None,
    workload: Annotated[list[str] | None, typer.Option(
        help="workloads whose recorded answers to replay (name or path; repeatable); "
             "default: every built-in with outcomes")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="folder of built-in workloads")] = None,
    latency_scale: Annotated[float, typer.Option(
        help="multiply the modelled latency (0 answers at once)")] = 1.0,
    hang_s: Annotated[float, typer.Option(help="seconds a 'timeout' failure hangs")] = 120.0,
    seed: Annotated[int, typer.Option(help="seed for failure draws and latency jitter")] = 0,
) -> None:
    """Serve the provider simulator, a stand-in for hosted providers (OpenAI protocol)."""
    import uvicorn

    from simulator import OUTCOME_WORKLOADS, SimulatorError, build_simulator, create_app
    from workloads import WorkloadFormatError

    try:
        sim = build_simulator(load_config(config), workloads=workload or OUTCOME_WORKLOADS,
                              data_dir=data_dir, fail_specs=fail or (),
                              latency_scale=latency_scale, hang_s=hang_s, seed=seed)
    except (ConfigError, SimulatorError, WorkloadFormatError) as exc:
        raise _fail(str(exc)) from None
    logger.info("simulating %s on http://%s:%d (%d known prompts; failures %s)",
                ", ".join(sim.keys), host, port, len(sim.catalog), sim.failures or "none")
    uvicorn.run(create_app(sim), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=2)


if __name__ == "__main__":
    app()
