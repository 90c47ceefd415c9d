"""Copy the registered champion models into a folder a Bento carries (``make bento``).

``python -m serving.export --out var/bento-models`` resolves ``models:/tier-classifier@champion``
and ``models:/response-scorer@champion`` in the MLflow store and copies their bundles to
``OUT/classifier`` and ``OUT/scorer``, with ``OUT/manifest.json`` naming the versions. The Bento
then serves them from its own files (:func:`serving.settings.bundled_models`): no MLflow needed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from router.classifier import registered_model_dir
from router.errors import RouterError
from router.scorer import registered_scorer_dir
from serving.settings import BUNDLED_MODELS

logger = logging.getLogger(__name__)


def export(out: Path, classifier_uri: str, scorer_uri: str | None) -> dict[str, str]:
    """Copy the bundles; returns the manifest written beside them."""
    from mlflow import MlflowClient

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    manifest = {"classifier": classifier_uri}
    shutil.copytree(registered_model_dir(classifier_uri), out / "classifier")
    if scorer_uri:
        shutil.copytree(registered_scorer_dir(scorer_uri), out / "scorer")
        manifest["scorer"] = scorer_uri
    client = MlflowClient()
    for kind, uri in list(manifest.items()):
        name, _, alias = uri.removeprefix("models:/").partition("@")
        if alias:
            manifest[f"{kind}_version"] = str(client.get_model_version_by_alias(name,
                                                                                alias).version)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> None:
    import mlflow

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUNDLED_MODELS)
    parser.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    parser.add_argument("--classifier", default="models:/tier-classifier@champion")
    parser.add_argument("--scorer", default="models:/response-scorer@champion",
                        help="'' for none")
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    try:
        manifest = export(args.out, args.classifier, args.scorer or None)
    except (RouterError, OSError) as exc:
        logger.error("export failed: %s (run `make repro` first to register models)", exc)
        sys.exit(1)
    logger.info("exported %s to %s", manifest, args.out)


if __name__ == "__main__":
    main()
