"""Creates and finds the runs of a sweep on an MLflow server (the layout: `tracking.layout`).

Runs are found by tags, never remembered only in memory: opening the same parent or trial twice
(a restarted driver, a retried trial) returns the same run.
"""

import contextlib
import logging
import os
import time

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException

from tracking import ui
from tracking.errors import TrackingError
from tracking.layout import (
    BEST_RUN_TAG,
    CHAMPION_ALIAS,
    EXPERIMENT_KIND_TAG,
    PARENT_TAG,
    REASON_TAG,
    ROLE_TAG,
    STATUS_TAG,
    SWEEP_TAG,
    TRIAL_ID_TAG,
    SWEEP_STATUS_TAG,
    WINDOWS_HASH_TAG,
    validation_params,
)
from tracking.params import (
    MAX_TAG_VALUE_LENGTH,
    batches,
    best_metric_name,
    flatten_params,
    truncate,
)
from tracking.server import is_healthy, validate_tracking_uri

_log = logging.getLogger(__name__)

# trial.status → MLflow run status.
TRIAL_STATUSES = {
    "completed": RunStatus.to_string(RunStatus.FINISHED),
    "early_stopped": RunStatus.to_string(RunStatus.KILLED),
    "failed": RunStatus.to_string(RunStatus.FAILED),
    "diverged": RunStatus.to_string(RunStatus.FAILED),
    "interrupted": RunStatus.to_string(RunStatus.KILLED),
}


def check_experiment(tracking_uri: str, name: str) -> None:
    """`TrackingError` if experiment `name` exists on the server but is deleted; creates nothing."""
    experiment = MlflowClient(tracking_uri).get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage != "active":
        raise TrackingError(f"experiment {name!r} is deleted on {tracking_uri}; restore it or pick another name")


class SweepTracker:
    """Creates and finds the runs of one sweep: the parent run and one child run per trial.

    Args:
        tracking_uri: the MLflow server, `http://host:port`.
        experiment: experiment name (one per sweep name); created unless `create=False`.
        parent_run_id: attach to an existing parent (trial workers, the compare CLI).
        create: False raises `TrackingError` when the experiment does not exist.
    """

    def __init__(self, tracking_uri: str, experiment: str, *, parent_run_id: str | None = None, create: bool = True):
        self.tracking_uri = validate_tracking_uri(tracking_uri)
        if not experiment or not str(experiment).strip():
            raise TrackingError("experiment name is empty")
        if not is_healthy(self.tracking_uri, timeout=10):
            raise TrackingError(f"MLflow server {self.tracking_uri} is not reachable (GET /health failed)")
        self.experiment = experiment
        self.client = MlflowClient(self.tracking_uri)
        self.experiment_id = self._experiment_id(experiment, create)
        self.parent_run_id = parent_run_id

    # ---- parent ----

    def open_parent(self, sweep_name: str, space: dict, space_yaml: str, run_id: str | None = None) -> str:
        """Open (or reopen) the sweep's parent run and return its id.

        Reuses `run_id` if given (resume), else the existing parent tagged with `sweep_name`,
        else creates one. The space is logged as `space.<dotted>` params and as `space.yaml`;
        reopening with a different space raises `TrackingError` (params are write-once).
        """
        run = self.get_run(run_id) if run_id else self._find_one({ROLE_TAG: "parent", SWEEP_TAG: sweep_name})
        if run is None:
            run = self.client.create_run(self.experiment_id, run_name=sweep_name,
                                         tags={ROLE_TAG: "parent", SWEEP_TAG: sweep_name})
        elif run.info.experiment_id != self.experiment_id:
            raise TrackingError(f"parent run {run.info.run_id} belongs to another experiment than {self.experiment!r}")
        self.parent_run_id = run.info.run_id
        self._reopen(run)
        if run.data.tags.get(SWEEP_STATUS_TAG):
            self.client.delete_tag(self.parent_run_id, SWEEP_STATUS_TAG)
        params = {f"space.{k}": v for k, v in flatten_params(space).items()}
        changed = sorted(k for k, v in params.items() if run.data.params.get(k, v) != v)
        if changed:
            raise TrackingError(
                f"sweep {sweep_name!r} was started with a different search space ({changed[0]} differs); "
                "use a new sweep name"
            )
        self._log_batch(self.parent_run_id, params={k: v for k, v in params.items() if k not in run.data.params})
        self.client.log_text(self.parent_run_id, space_yaml, "space.yaml")
        ui.save_trials_view(self.client, self.experiment_id)  # what `ui_url` opens
        return self.parent_run_id

    def log_validation(self, run_id: str, record: dict) -> None:
        """Which windows the runs are scored on: params `val.*`, tag `val.windows_hash` and the
        window list as `validation.json` (`record` = `ETH3DWindows.describe()`)."""
        import json

        self._log_batch(run_id, params=validation_params(record), tags={WINDOWS_HASH_TAG: record["windows_hash"]})
        self.client.log_text(run_id, json.dumps(record, indent=1), "validation.json")

    def finish_parent(self, best_run_id: str | None, best_metrics: dict, leaderboard_files: list) -> None:
        """Record the winner (`best.run_id`, `best/*` metrics), attach the leaderboard, end the parent."""
        parent = self.require_parent()
        tags = {BEST_RUN_TAG: best_run_id} if best_run_id else {}
        metrics = {best_metric_name(k): v for k, v in best_metrics.items() if v is not None}
        self._log_batch(parent, metrics=metrics, tags=tags)
        for path in leaderboard_files:
            self.client.log_artifact(parent, str(path), "leaderboard")
        self.client.set_terminated(parent, "FINISHED")

    def interrupt_parent(self) -> None:
        """The sweep was interrupted: tag `sweep.status=interrupted`, end the parent KILLED (a
        resume reopens it)."""
        parent = self.require_parent()
        self._log_batch(parent, tags={SWEEP_STATUS_TAG: "interrupted"})
        self.client.set_terminated(parent, "KILLED")

    # ---- trials ----

    def open_trial(self, trial_id: str, params: dict, run_name: str | None = None) -> str:
        """Open the child run of `trial_id` and return its id; the same trial always gets the same run.

        `params` may be nested (flattened to dotted names). Params already logged are kept.
        """
        parent = self.require_parent()
        tags = {ROLE_TAG: "trial", PARENT_TAG: parent, TRIAL_ID_TAG: str(trial_id)}
        run = self._find_trial(trial_id)
        if run is None:
            run = self.client.create_run(self.experiment_id, run_name=run_name or str(trial_id), tags=tags)
            run = self._settle_duplicates(trial_id, run)
        else:
            self._reopen(run)
            for tag in (STATUS_TAG, REASON_TAG):  # a resumed trial is no longer failed/stopped
                if tag in run.data.tags:
                    self.client.delete_tag(run.info.run_id, tag)
        flat = flatten_params(params)
        for key in sorted(k for k, v in flat.items() if k in run.data.params and run.data.params[k] != v):
            _log.warning("trial %s: param %s already logged as %r; keeping it (new value %r)",
                         trial_id, key, run.data.params[key], flat[key])
        self._log_new_params(run.info.run_id, flat, run.data.params)
        return run.info.run_id

    def _log_new_params(self, run_id: str, params: dict, logged: dict) -> None:
        """Params not logged yet. Two processes opening one trial at once may both insert a key
        (the server's check-then-insert races); the loser re-reads the run and logs what is left."""
        try:
            self._log_batch(run_id, params={k: v for k, v in params.items() if k not in logged})
        except MlflowException as err:
            if "UNIQUE constraint" not in str(err) and "duplicate key" not in str(err):
                raise
            logged = self.client.get_run(run_id).data.params
            self._log_batch(run_id, params={k: v for k, v in params.items() if k not in logged})

    def close_trial(self, run_id: str, status: str, reason: str = "") -> None:
        """Tag the terminal `trial.status`/`trial.stop_reason` and end the run (FINISHED/KILLED/FAILED).

        Called by the driver, so runs of trials killed by early stopping are not left RUNNING.
        """
        if status not in TRIAL_STATUSES:
            raise TrackingError(f"trial status {status!r} is not one of {', '.join(TRIAL_STATUSES)}")
        self._log_batch(run_id, tags={STATUS_TAG: status, REASON_TAG: reason})
        self.client.set_terminated(run_id, TRIAL_STATUSES[status])

    def trial_runs(self) -> list:
        """All child runs of the parent (`mlflow.entities.Run`), oldest first."""
        parent = self.require_parent()
        return self._search(f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{ROLE_TAG}` = 'trial'",
                            order_by=["attributes.start_time ASC"])

    def ui_url(self) -> str:
        """The MLflow UI's runs table of this sweep's trials, best `best/val_abs_rel` first, with
        their metric, LoRA settings and status as columns (the saved view of `open_parent`)."""
        return ui.runs_url(self.tracking_uri, self.experiment_id)

    def metric_history(self, run_id: str, key: str) -> list:
        """Every logged value of `key` in `run_id` (`mlflow.entities.Metric`), by step."""
        return sorted(self.client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))

    # ---- registry ----

    def register_champion(self, run_id: str, model_name: str, python_model, artifacts: dict,
                          pip_requirements=None, *, code_paths=None, alias: str = CHAMPION_ALIAS) -> int:
        """Log `python_model` (an `mlflow.pyfunc.PythonModel`) with `artifacts` in `run_id`,
        register it under `model_name` and point the alias `champion` at it; return the version.

        Idempotent: a run that already has a version of `model_name` gets the alias on that version;
        no new version is made (a resumed or re-finished sweep registers nothing twice).

        `pip_requirements` default: the installed versions of mlflow, torch, peft, safetensors,
        numpy and pyyaml (skips MLflow's slow requirement inference).
        """
        import mlflow

        run = self.get_run(run_id)
        if run is None:
            raise TrackingError(f"run {run_id} does not exist on {self.tracking_uri}")
        for name, path in artifacts.items():
            if not os.path.exists(path):
                raise TrackingError(f"model artifact {name!r} not found at {path}")
        existing = self.model_version_of(model_name, run_id)
        if existing is not None:
            self.set_alias(model_name, existing, alias)
            return existing
        try:
            with tracking_uri_set_to(self.tracking_uri), mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=python_model, artifacts=artifacts,
                    pip_requirements=pip_requirements or default_requirements(), code_paths=code_paths,
                    registered_model_name=model_name,
                )
        finally:
            if run.info.status != "RUNNING":  # start_run reopened it: restore FINISHED/KILLED/FAILED
                self.client.set_terminated(run_id, run.info.status, end_time=run.info.end_time)
        version = int(info.registered_model_version)
        self.client.set_model_version_tag(model_name, str(version), "source.run_id", run_id)
        self.set_alias(model_name, version, alias)
        return version

    def set_alias(self, model_name: str, version: int, alias: str = CHAMPION_ALIAS) -> None:
        self.client.set_registered_model_alias(model_name, alias, str(version))

    def model_version_of(self, model_name: str, run_id: str) -> int | None:
        """The version of registered model `model_name` made from `run_id`, if any."""
        try:
            versions = self.client.search_model_versions(f"name = '{_quote(model_name)}' and run_id = '{run_id}'")
        except MlflowException:  # no such registered model yet
            return None
        return min((int(v.version) for v in versions), default=None)

    # ---- helpers ----

    def _experiment_id(self, name: str, create: bool) -> str:
        check_experiment(self.tracking_uri, name)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        if not create:
            raise TrackingError(f"experiment {name!r} not found on {self.tracking_uri}")
        try:
            return self.client.create_experiment(name, tags=dict([EXPERIMENT_KIND_TAG]))
        except MlflowException as err:  # another process created it first
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    def require_parent(self) -> str:
        if self.parent_run_id:
            return self.parent_run_id
        run = self._find_one({ROLE_TAG: "parent"})
        if run is None:
            raise TrackingError(f"experiment {self.experiment!r} has no sweep parent run")
        self.parent_run_id = run.info.run_id
        return self.parent_run_id

    def _find_trial(self, trial_id: str):
        return self._find_one({ROLE_TAG: "trial", PARENT_TAG: self.parent_run_id, TRIAL_ID_TAG: str(trial_id)})

    def _settle_duplicates(self, trial_id: str, created):
        """Two processes racing to open one trial: the oldest run wins, the others are deleted."""
        runs = self._search(_tag_filter({PARENT_TAG: self.parent_run_id, TRIAL_ID_TAG: str(trial_id)}),
                            order_by=["attributes.start_time ASC"])
        runs.sort(key=lambda r: (r.info.start_time, r.info.run_id))
        winner = runs[0] if runs else created
        if winner.info.run_id != created.info.run_id:
            self.client.delete_run(created.info.run_id)
        return winner

    def _find_one(self, tags: dict):
        """The newest active run with all `tags`, or None."""
        runs = self._search(_tag_filter(tags), order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def _search(self, filter_string: str, order_by=None, max_results: int | None = None) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, ViewType.ACTIVE_ONLY,
                                           max_results=max_results or 1000, order_by=order_by, page_token=token)
            runs.extend(page)
            token = page.token
            if not token or (max_results and len(runs) >= max_results):
                return runs

    def get_run(self, run_id: str):
        try:
            run = self.client.get_run(run_id)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise TrackingError(f"run {run_id} not found on {self.tracking_uri}") from None
            raise
        if run.info.lifecycle_stage != "active":
            raise TrackingError(f"run {run_id} is deleted on {self.tracking_uri}")
        return run

    def _reopen(self, run) -> None:
        if run.info.status != "RUNNING":
            self.client.update_run(run.info.run_id, status="RUNNING")

    def _log_batch(self, run_id: str, metrics: dict | None = None, params: dict | None = None,
                   tags: dict | None = None) -> None:
        now = int(time.time() * 1000)
        metric_list = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        param_list = [Param(k, v) for k, v in (params or {}).items()]
        tag_list = [RunTag(k, truncate(k, str(v), MAX_TAG_VALUE_LENGTH)) for k, v in (tags or {}).items()]
        for m, p, t in batches(metric_list, param_list, tag_list):
            self.client.log_batch(run_id, metrics=m, params=p, tags=t)


def default_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("mlflow", "torch", "peft", "safetensors", "numpy", "pyyaml"):
        try:
            pins.append(f"{package}=={version(package)}".replace("+cpu", ""))
        except PackageNotFoundError:
            pass
    return pins


def _tag_filter(tags: dict) -> str:
    return " and ".join(f"tags.`{k}` = '{_quote(v)}'" for k, v in tags.items())


def _quote(value) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


@contextlib.contextmanager
def tracking_uri_set_to(uri: str):
    """Point MLflow's fluent API (`mlflow.start_run`, `mlflow.pyfunc.*`) at `uri` for a block.

    `mlflow.set_tracking_uri` also writes `MLFLOW_TRACKING_URI` into the environment, and
    `mlflow.get_tracking_uri()` answers MLflow's default (`sqlite:///mlflow.db`) when nothing was
    set, so "set, then set back what get returned" leaves that default in the environment of this
    process and its children. Both the fluent URI and the variable are restored as they were.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    fluent_before = getattr(tracking_utils, "_tracking_uri", None)
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(fluent_before)
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before
