"""The MLflow registry room: runs, model versions, and the `challenger`/`champion` aliases, kept
per shop.

Every run, registered model and alias belongs to one shop: a shop's models are registered as
`sendwise.SHOP.TASK` in experiments of the same name, with the shop in their tags, so nothing
that reads one shop's champions can see another's. Models are saved in their own pickle-free
formats and logged as run artifacts; a registered version points at those files, and records
what it was trained on (`schema.json`: the columns it reads; the data window; when). Serving and
scoring load `@champion`, never "latest". Each move of `champion` is appended to the registered
model's `champion_log` tag, so a rollback knows the previous champion.

A SQLite store is initialised, and aliases moved, under a file lock beside the database: two
processes starting on a fresh store would otherwise race MLflow's schema migration.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

from sendwise.errors import SendwiseError

from .settings import home

log = logging.getLogger(__name__)

PREFIX = "sendwise"
CHAMPION, CHALLENGER = "champion", "challenger"
CHAMPION_LOG = "champion_log"  # registered-model tag: every move of `champion`, oldest first
LOG_ENTRIES = 40  # kept in the tag (MLflow tags hold 5,000 characters)
_READY: set[str] = set()  # stores initialised by this process


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, or a SQLite store under the sendwise home."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home() / 'mlflow.db'}"


def _lock_path(uri: str) -> Path:
    if uri.startswith("sqlite:///"):  # `sqlite:////abs/path.db` or `sqlite:///relative.db`
        database = Path(unquote(uri[len("sqlite:///") :].split("?")[0]))
        return database.with_name(database.name + ".lock")
    return home() / "registry.lock"


@contextmanager
def store_lock() -> Iterator[None]:
    """One sendwise process at a time: initialising a store, creating names, moving aliases."""
    path = _lock_path(tracking_uri())
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def client():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # not on our stdout
    import mlflow
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri in _READY:
        return MlflowClient(uri)
    with store_lock():  # the first touch of a store creates (migrates) its tables
        mlflow_client = MlflowClient(uri)
        mlflow_client.search_experiments(max_results=1)
        mlflow_client.search_registered_models(max_results=1)
    _READY.add(uri)
    return mlflow_client


def model_name(shop: str, task: str) -> str:
    return f"{PREFIX}.{shop}.{task}"


def label(shop: str, task: str) -> str:
    """How messages name a shop's model."""
    return f"{PREFIX}-{task} of shop {shop}"


def experiment_id(shop: str, task: str) -> str:
    """The shop's experiment for `task`, created with an explicit artifact location."""
    mlflow_client = client()
    name = model_name(shop, task)
    found = mlflow_client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    artifacts = os.environ.get("SENDWISE_ARTIFACTS", str(home() / "mlartifacts"))
    location = Path(artifacts).resolve() / shop / task
    location.mkdir(parents=True, exist_ok=True)
    with store_lock():
        found = mlflow_client.get_experiment_by_name(name)  # another process may have made it
        if found:
            return found.experiment_id
        return mlflow_client.create_experiment(
            name, artifact_location=location.as_uri(), tags={"shop": shop, "task": task}
        )


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str
    challenger: str | None = None  # the version behind `challenger` once this one was registered

    @property
    def is_challenger(self) -> bool:
        return self.challenger == self.version


def log_and_register(
    shop: str,
    task: str,
    model_dir: Path,
    params: dict,
    metrics: dict[str, float],
    tags: dict[str, str],
    documents: dict[str, object],
    challenger: bool = True,
) -> Registered:
    """One MLflow run of `shop` holding the model files, its settings and metrics; a new model
    version, made `challenger` unless told not to. Reports what is the challenger afterwards
    (another process may have registered one since)."""
    import mlflow

    mlflow_client = client()
    tags = {**tags, "shop": shop, "task": task}
    tags.setdefault("trained_at", datetime.now(UTC).isoformat(timespec="seconds"))
    with mlflow.start_run(experiment_id=experiment_id(shop, task), tags=tags) as run:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in metrics.items()})
        for filename, document in documents.items():
            mlflow.log_dict(document, filename)
        mlflow.log_artifacts(str(model_dir), "model")
        source = f"{run.info.artifact_uri}/model"
    name = model_name(shop, task)
    with store_lock():
        if not mlflow_client.search_registered_models(f"name = '{name}'"):
            mlflow_client.create_registered_model(name, tags={"shop": shop, "task": task})
    version_tags = {k: str(v) for k, v in tags.items() if len(str(v)) <= 5000}
    version = mlflow_client.create_model_version(
        name, source, run_id=run.info.run_id, tags=version_tags
    )
    with store_lock():
        if challenger:
            mlflow_client.set_registered_model_alias(name, CHALLENGER, version.version)
        current = alias_version(shop, task, CHALLENGER)
    return Registered(
        name, str(version.version), run.info.run_id, str(current.version) if current else None
    )


def set_challenger(shop: str, task: str, version: str) -> None:
    with store_lock():
        client().set_registered_model_alias(model_name(shop, task), CHALLENGER, version)


def alias_version(shop: str, task: str, alias: str):
    """The model version behind an alias of the shop's model, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(model_name(shop, task), alias)
    except MlflowException:
        return None


def model_version(shop: str, task: str, version: str):
    """One version of the shop's model; a clear error if there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version(model_name(shop, task), str(version))
    except MlflowException:
        raise SendwiseError(
            f"{label(shop, task)} has no version {version} in {tracking_uri()}"
        ) from None


def run_metric(run_id: str, metric: str) -> float | None:
    return client().get_run(run_id).data.metrics.get(metric.replace("@", "_at_"))


def run_document(run_id: str, filename: str):
    """A JSON document logged with the run (`schema.json`, `settings.json`, ...), or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client()
    uri = client().get_run(run_id).info.artifact_uri
    try:
        return mlflow.artifacts.load_dict(f"{uri}/{filename}")
    except (MlflowException, OSError, ValueError):
        return None


def champion_log(shop: str, task: str) -> list[dict]:
    """Every move of the shop's `champion` alias, oldest first (the last `LOG_ENTRIES`)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client().get_registered_model(model_name(shop, task))
    except MlflowException:
        return []
    return json.loads(model.tags.get(CHAMPION_LOG, "[]"))


def champion_stack(entries: list[dict]) -> list[str]:
    """The champions in force, oldest first: a promotion pushes, a rollback pops."""
    stack: list[str] = []
    for entry in entries:
        if entry["action"] == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != entry["version"]:
                stack.append(entry["version"])
        else:
            stack.append(entry["version"])
    return stack


def set_champion(shop: str, task: str, version: str, action: str, note: str = "") -> None:
    """Move `champion` of the shop's model to `version` and record the move in the registry."""
    name = model_name(shop, task)
    with store_lock():
        mlflow_client = client()
        entries = champion_log(shop, task)
        entries.append(
            {
                "version": str(version),
                "action": action,
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                **({"note": note} if note else {}),
            }
        )
        mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))
        mlflow_client.set_registered_model_tag(name, "champion_version", str(version))
        recorded = json.dumps(entries[-LOG_ENTRIES:])
        mlflow_client.set_registered_model_tag(name, CHAMPION_LOG, recorded)
        mlflow_client.set_model_version_tag(name, str(version), "champion_since", entries[-1]["at"])


def previous_champion(shop: str, task: str, current: str | None = None) -> str | None:
    """The champion before `current` (default: the recorded one), as the recorded moves say."""
    stack = champion_stack(champion_log(shop, task))
    if current is not None and stack and stack[-1] != str(current):
        return stack[-1]  # `current` was set outside sendwise: the last recorded one came before
    return stack[-2] if len(stack) >= 2 else None


def rollback(shop: str, task: str) -> str:
    """Return `champion` to the previous champion; a message saying what moved."""
    current = alias_version(shop, task, CHAMPION)
    if current is None:
        raise SendwiseError(f"{label(shop, task)} has no champion to roll back")
    previous = previous_champion(shop, task, current.version)
    if previous is None:
        raise SendwiseError(
            f"{label(shop, task)}: champion v{current.version} has no previous champion recorded "
            f"to roll back to; choose one: sendwise promote {task} --version N --shop-name {shop}"
        )
    set_champion(shop, task, previous, "rollback", f"from v{current.version}")
    return f"rolled back {label(shop, task)}: champion v{current.version} -> v{previous}"


def download(shop: str, task: str, alias: str = CHAMPION, version: str | None = None):
    """The files of the shop's model behind an alias (or a given version), and its version."""
    import mlflow

    if version is None:
        found = alias_version(shop, task, alias)
        if found is None:
            raise SendwiseError(
                f"no {alias} for {PREFIX}-{task} in shop {shop} ({tracking_uri()}); run "
                f"`sendwise train {task}` and `sendwise promote {task}` for that shop"
            )
    else:
        found = model_version(shop, task, version)
    client()
    path = mlflow.artifacts.download_artifacts(artifact_uri=found.source)
    return Path(path), str(found.version)


def shops() -> list[str]:
    """Every shop with a registered model in the store."""
    found = {
        model.tags.get("shop")
        for model in client().search_registered_models(f"name LIKE '{PREFIX}.%'")
    }
    return sorted(s for s in found if s)


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as `sendwise models list` shows it."""

    shop: str
    task: str
    name: str
    version: str
    aliases: list[str]
    metric: str | None
    value: float | None
    data_window: str | None
    trained_at: str | None
    run_id: str


def list_versions(shop: str | None = None) -> list[VersionInfo]:
    """Every version of every model of `shop` (or of every shop), with aliases and figures."""
    mlflow_client = client()
    found = []
    pattern = f"{PREFIX}.{shop}.%" if shop else f"{PREFIX}.%"
    models = sorted(
        mlflow_client.search_registered_models(f"name LIKE '{pattern}'"), key=lambda m: m.name
    )
    for model in models:
        owner, task = model.tags.get("shop"), model.tags.get("task")
        if not owner or not task or (shop and owner != shop):
            continue
        aliases: dict[str, list[str]] = {}
        for alias, number in (model.aliases or {}).items():
            aliases.setdefault(str(number), []).append(alias)
        versions = mlflow_client.search_model_versions(f"name = '{model.name}'")
        for version in sorted(versions, key=lambda v: int(v.version)):
            metric = version.tags.get("primary_metric")
            run = mlflow_client.get_run(version.run_id)
            value = run.data.metrics.get(metric.replace("@", "_at_")) if metric else None
            created = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC)
            found.append(
                VersionInfo(
                    owner,
                    task,
                    model.name,
                    str(version.version),
                    sorted(aliases.get(str(version.version), [])),
                    metric,
                    value,
                    version.tags.get("data_window"),
                    version.tags.get("trained_at") or created.isoformat(timespec="seconds"),
                    version.run_id,
                )
            )
    return found
