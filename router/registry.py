"""Model bundles registered in MLflow: ``models:/NAME@ALIAS`` -> the bundle's local folder.

Shared by the classifier and the response scorer: each logs its bundle as a pyfunc artifact
(``classifier`` / ``scorer``, see training/register.py) whose folder the MLmodel file names.
The tracking URI is MLflow's own setting (``MLFLOW_TRACKING_URI`` or ``mlflow.set_tracking_uri``);
the project's store is ``sqlite:///mlruns/mlflow.db``.
"""

from __future__ import annotations

from pathlib import Path

from router.errors import RouterError


def registered_artifact_dir(uri: str, artifact: str, error: type[RouterError],
                            what: str) -> Path:
    """Download ``uri`` (``models:/NAME@ALIAS`` or ``/VERSION``) and return the folder of its
    pyfunc artifact ``artifact``; failures raise ``error`` naming ``what`` was expected."""
    import mlflow
    import yaml

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except mlflow.exceptions.MlflowException as exc:
        raise error(f"{uri}: cannot load from the MLflow registry "
                    f"({mlflow.get_tracking_uri()}): {exc}") from exc
    try:
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
        return local / flavor["artifacts"][artifact]["path"]
    except (OSError, KeyError, TypeError) as exc:
        raise error(f"{uri}: not a {what} bundle (no pyfunc artifact {artifact!r} in its "
                    f"MLmodel)") from exc
