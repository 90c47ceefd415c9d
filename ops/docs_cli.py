"""``tier-router docs ...``: the documents whose parts are rendered from the config.

The edge of :mod:`ops.docs`: reads the config, ``params.yaml`` and the documents, writes the
documents back (``render``) or only compares them (``render --check``, for CI and tests).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Annotated

import typer

docs_app = typer.Typer(no_args_is_help=True, help="Render or check the config-rendered docs.")
logger = logging.getLogger(__name__)

# Lines of diff shown per drifted part: enough to see what moved, short enough for a CI log.
_DIFF_LINES = 12


def _short_diff(found: str, expected: str, label: str) -> str:
    lines = list(difflib.unified_diff(found.splitlines(), expected.splitlines(),
                                      f"{label} (committed)", f"{label} (rendered)",
                                      lineterm="", n=0))
    more = len(lines) - _DIFF_LINES
    return "\n".join(lines[:_DIFF_LINES] + ([f"... {more} more diff lines"] if more > 0 else []))


@docs_app.command("render")
def render(
    config: Annotated[Path, typer.Option(help="router YAML")] = Path("configs/router.yaml"),
    params: Annotated[Path, typer.Option(help="training params (calibration names, harvest "
                                              "window)")] = Path("params.yaml"),
    root: Annotated[Path, typer.Option(help="repository root holding the documents")]
        = Path("."),
    check: Annotated[bool, typer.Option(
        "--check", help="change nothing; exit 1 naming each rendered part that drifted")]
        = False,
) -> None:
    """Rewrite the rendered parts of the blueprint, the rollout checklist and the templates
    from the config and the code; with ``--check``, only report the parts that differ."""
    from ops.docs import DocInputs, MarkerError, check_documents, document_paths, render_documents
    from router.config import load_config
    from router.errors import ConfigError
    from training.params import ParamsError, load_params

    try:
        inputs = DocInputs(config=load_config(config), params=load_params(params))
    except (ConfigError, ParamsError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=1) from None
    texts: dict[str, str] = {}
    for relative in document_paths():
        path = root / relative
        try:
            texts[str(relative)] = path.read_text(encoding="utf-8")
        except OSError as exc:
            typer.echo(f"{path}: cannot read: {exc.strerror or exc}", err=True)
            raise typer.Exit(code=1) from None

    try:
        if check:
            drifts = check_documents(texts, inputs)
        else:
            rendered = render_documents(texts, inputs)
    except MarkerError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=1) from None

    if check:
        for drift in drifts:
            typer.echo(f"{drift.path}: rendered:{drift.part} differs from {config}", err=True)
            typer.echo(_short_diff(drift.found, drift.expected, f"{drift.path}:{drift.part}"),
                       err=True)
        if drifts:
            typer.echo(f"{len(drifts)} rendered part(s) drifted; run `tier-router docs render"
                       f"{'' if config == Path('configs/router.yaml') else f' --config {config}'}`",
                       err=True)
            raise typer.Exit(code=1)
        typer.echo(f"{len(texts)} documents: every rendered part matches {config}")
        return

    for relative, text in rendered.items():
        if text != texts[relative]:
            (root / relative).write_text(text, encoding="utf-8")
            logger.debug("rewrote %s", relative)
            typer.echo(f"{relative}: rewritten")
        else:
            typer.echo(f"{relative}: unchanged")
