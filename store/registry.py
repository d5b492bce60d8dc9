"""The MLflow registry room: runs, model versions, and the `challenger`/`champion` aliases.

Models are saved in their own pickle-free formats and logged as run artifacts; a registered
version points at those files. Serving and scoring load `@champion`, never "latest".
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sendwise.errors import SendwiseError

from .settings import home

log = logging.getLogger(__name__)

PREFIX = "sendwise"
CHAMPION, CHALLENGER = "champion", "challenger"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, or a SQLite store under the sendwise home."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home() / 'mlflow.db'}"


def client():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient(tracking_uri())


def experiment_id(name: str) -> str:
    """The experiment's id, created with an explicit artifact location (MLflow 3 needs one)."""
    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    artifacts = os.environ.get("SENDWISE_ARTIFACTS", str(home() / "mlartifacts"))
    location = Path(artifacts).resolve() / name
    location.mkdir(parents=True, exist_ok=True)
    return mlflow_client.create_experiment(name, artifact_location=location.as_uri())


def model_name(task: str) -> str:
    return f"{PREFIX}-{task}"


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str


def log_and_register(
    task: str,
    model_dir: Path,
    params: dict,
    metrics: dict[str, float],
    tags: dict[str, str],
    documents: dict[str, object],
) -> Registered:
    """One MLflow run holding the model files, its settings and metrics; a new `challenger`."""
    import mlflow

    mlflow_client = client()
    with mlflow.start_run(experiment_id=experiment_id(model_name(task)), tags=tags) as run:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in metrics.items()})
        for filename, document in documents.items():
            mlflow.log_dict(document, filename)
        mlflow.log_artifacts(str(model_dir), "model")
        source = f"{run.info.artifact_uri}/model"
    name = model_name(task)
    if not mlflow_client.search_registered_models(f"name = '{name}'"):
        mlflow_client.create_registered_model(name)
    version = mlflow_client.create_model_version(name, source, run_id=run.info.run_id, tags=tags)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version.version)
    return Registered(name, version.version, run.info.run_id)


def alias_version(task: str, alias: str):
    """The model version behind an alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(model_name(task), alias)
    except MlflowException:
        return None


def run_metric(run_id: str, metric: str) -> float | None:
    return client().get_run(run_id).data.metrics.get(metric.replace("@", "_at_"))


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    message: str


def promote(task: str, metric: str) -> Promotion:
    """Move `champion` to the challenger only if its validation `metric` beats the champion's."""
    challenger = alias_version(task, CHALLENGER)
    name = model_name(task)
    if challenger is None:
        return Promotion(False, f"{name} has no challenger; train one first")
    champion = alias_version(task, CHAMPION)
    new = run_metric(challenger.run_id, metric)
    if champion is not None and champion.version == challenger.version:
        return Promotion(True, f"{name} v{challenger.version} is already the champion")
    if champion is not None:
        old = run_metric(champion.run_id, metric)
        if new is None or (old is not None and new <= old):
            return Promotion(
                False,
                f"refused: {name} challenger v{challenger.version} {metric} {new:.4f} does not "
                f"beat champion v{champion.version} {old:.4f}",
            )
    mlflow_client = client()
    mlflow_client.set_registered_model_alias(name, CHAMPION, challenger.version)
    mlflow_client.set_registered_model_tag(name, "champion_version", challenger.version)
    before = f"champion v{champion.version}" if champion else "no champion"
    return Promotion(
        True, f"promoted {name} v{challenger.version} ({metric} {new:.4f}) over {before}"
    )


def download(task: str, alias: str = CHAMPION) -> tuple[Path, str]:
    """The files of the model behind an alias, and its version."""
    import mlflow

    version = alias_version(task, alias)
    if version is None:
        raise SendwiseError(
            f"no {alias} for {model_name(task)} in {tracking_uri()}; run `sendwise train {task}` "
            f"and `sendwise promote {task}`"
        )
    client()
    path = mlflow.artifacts.download_artifacts(artifact_uri=version.source)
    return Path(path), version.version
