"""Everything a user can get wrong, checked before Ray starts.

The space file (every value a range or choice can produce), the command line, the storage path,
the Optuna study storage, the MLflow server and experiment, the dataset tree and the checkpoint: a
mistake is one line naming the culprit, exit code 2, and nothing is written (no sweep folder, no
MLflow experiment or run, no Optuna study).
Only caches are filled (synthetic scenes, the tiny base, resampled views): they are needed to check
the data, and the sweep would build them anyway.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from lora_train.errors import UserError
from sweeps.space import SweepSpace
from sweeps.space_file import load_space

DEFAULT_STORAGE = "runs/sweeps"
PARENT_RUN_FILE = "mlflow_parent_run_id"
CLI_FIELDS = ("num_samples", "max_epochs", "max_concurrent", "workers_per_trial", "gpus_per_trial",
              "max_failures", "name")


@dataclass(frozen=True)
class SweepPlan:
    """A checked sweep, ready to start.

    Attributes:
        space: the space with the command line's overrides applied.
        overrides: training-config overrides of every trial (data root, checkpoint, the protocol).
        storage_path: the storage root; `sweep_dir` = `<storage_path>/<name>`.
        tracking_uri, experiment: the MLflow server and experiment.
        resume: continue the sweep of this name.
        validation: the protocol's validation windows (`ETH3DWindows.describe()`), or None when the
            data was not checked (a stand-in trainer).
        warm_start: MLflow experiments (on the same server) whose finished trials seed the search.
        rerun_duplicates: train proposals equal to a warm-start configuration anyway.
    """

    space: SweepSpace
    overrides: dict
    storage_path: str
    sweep_dir: Path
    tracking_uri: str
    experiment: str
    resume: bool
    validation: dict | None
    warm_start: tuple[str, ...] = ()
    rerun_duplicates: bool = False


def preflight(args, *, check_data: bool = True) -> SweepPlan:
    """Check the command line and everything it names; see the module docstring."""
    space = load_space(args.space).with_overrides(
        **{f: getattr(args, f) for f in CLI_FIELDS if getattr(args, f) is not None})
    overrides = {**cli_overrides(args), **space.protocol_overrides()}
    storage_path, sweep_dir = storage_paths(space, args)
    space = check_study_storage(space, args)
    tracking_uri, experiment = check_tracking(args.tracking_uri, args.experiment or space.name)
    check_warm_start(tracking_uri, args.warm_start)
    validation = check_data_and_model(space, overrides) if check_data else None
    return SweepPlan(space, overrides, storage_path, sweep_dir, tracking_uri, experiment, args.resume, validation,
                     tuple(args.warm_start), args.rerun_duplicates)


def cli_overrides(args) -> dict:
    """Training-config overrides from `--data-root` and `--checkpoint` (paths checked)."""
    overrides = {}
    if args.data_root is not None:
        root = Path(args.data_root).expanduser().resolve()
        if not root.is_dir():
            raise UserError(f"--data-root: not a directory: {args.data_root}")
        overrides["data.root"] = str(root)
    if args.checkpoint is not None:
        checkpoint = Path(args.checkpoint).expanduser().resolve()
        if not checkpoint.is_file():
            raise UserError(f"--checkpoint: file not found: {args.checkpoint}")
        overrides.update({"model.preset": "vggt1b", "model.checkpoint": str(checkpoint)})
    return overrides


def storage_paths(space: SweepSpace, args) -> tuple[str, Path]:
    """(storage root, sweep folder): a writable local or mounted folder; the sweep is new unless
    `--resume`, and exists if `--resume`. Nothing is created here."""
    storage = args.storage_path or DEFAULT_STORAGE
    if "://" in storage:
        raise UserError(f"--storage-path: {storage}: give a local or network-mounted folder")
    storage_dir = Path(storage).expanduser().resolve()
    existing = next(p for p in (storage_dir, *storage_dir.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--storage-path: {existing} is a file, not a folder")
    try:  # the only reliable test of writability (read-only mounts, ACLs, root on NFS)
        tempfile.TemporaryDirectory(dir=existing, prefix=".vggt-sweep-probe-").cleanup()
    except OSError as err:
        raise UserError(f"--storage-path: cannot write in {existing}: {err.strerror}") from None
    sweep_dir = storage_dir / space.name
    exists = (sweep_dir / PARENT_RUN_FILE).exists() or any(sweep_dir.glob("experiment_state*.json"))
    if args.resume and not exists:
        raise UserError(f"--resume: no sweep named {space.name!r} in {storage_dir}")
    if not args.resume and exists:
        raise UserError(f"--name: sweep {space.name!r} already exists in {storage_dir}; "
                        "pass --resume to continue it or choose another --name")
    return str(storage_dir), sweep_dir


def check_study_storage(space: SweepSpace, args) -> SweepSpace:
    """The Optuna storage (`--optuna-storage`, else the space's `sampler.storage`) is a well-formed
    URL without a password, answers, and holds this sweep's study exactly when resuming
    (sweeps/study_storage.py). Returns the space with the URL in `sampler.storage`."""
    from sweeps.study_storage import check_storage, url_problem

    flag = getattr(args, "optuna_storage", None)
    if flag is not None and (problem := url_problem(flag)):
        raise UserError(f"--optuna-storage: {problem}")
    url = flag or space.sampler.get("storage")
    if url is None:  # the default: optuna.db in the sweep folder, checked with the folder
        return space
    source = "--optuna-storage" if flag else f"{space.path}: sampler.storage"
    check_storage(url, space.name, args.resume, source)
    return replace(space, sampler={**space.sampler, "storage": url})


def check_tracking(flag_uri: str | None, experiment: str) -> tuple[str, str]:
    """The MLflow server answers and the experiment is usable (not deleted). Nothing is created."""
    from tracking.errors import TrackingError
    from tracking.runs import check_experiment
    from tracking.server import is_healthy, resolve_tracking_uri

    source = "--tracking-uri" if flag_uri else "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") \
        else "the embedded MLflow server"
    try:
        uri = resolve_tracking_uri(flag_uri)
        if not is_healthy(uri, timeout=10):
            raise TrackingError(f"MLflow server {uri} is not reachable (GET /health failed)")
        check_experiment(uri, experiment)
    except TrackingError as err:
        raise UserError(f"{source}: {err}") from None
    return uri, experiment


def check_warm_start(tracking_uri: str, experiments) -> None:
    """Every `--warm-start` experiment exists (and is not deleted) on the sweep's MLflow server."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    for name in experiments:
        try:
            experiment = MlflowClient(tracking_uri).get_experiment_by_name(name)
        except MlflowException as err:
            raise UserError(f"--warm-start: cannot read experiment {name!r} on {tracking_uri}: {err.message}") from None
        if experiment is None or experiment.lifecycle_stage != "active":
            raise UserError(f"--warm-start: no experiment {name!r} on {tracking_uri}"
                            + (" (it is deleted)" if experiment is not None else ""))


def check_data_and_model(space: SweepSpace, overrides: dict) -> dict:
    """The dataset gives a train/val split with enough views for every trial, the validation
    windows of the protocol exist, and the checkpoint fits the model. Builds the cached demo data
    and tiny base on first use.

    Returns:
        The validation windows (`ETH3DWindows.describe()`, with their `windows_hash`).
    """
    from lora_train.builders import build_datasets, check_pretrained
    from lora_train.config import load_config

    base = str(space.base_config_path) if space.base_config_path else None
    config = load_config(base, {**space.base_overrides, **overrides})
    tiny_base = config.model.checkpoint == "tiny-base"
    if not tiny_base:  # a given checkpoint is checked first: it takes a second, data may take longer
        check_pretrained(config)
    if config.data.root is None:
        print("preparing synthetic ETH3D-format scenes (cached)...", flush=True)
    train_set, val_set = build_datasets(config)
    fewest = min(len(scene.view_names) for scene in train_set.scenes.values())
    most = space.max_value("data.num_views", config.data.num_views)
    if most > fewest:
        raise UserError(f"{space.path}: data.num_views: the space asks for up to {most} views per window, but a "
                        f"training scene of {config.data.root or 'the synthetic set'} has only {fewest}")
    if tiny_base:
        print("preparing the tiny pretrained base (cached)...", flush=True)
        check_pretrained(config)
    return val_set.describe()
