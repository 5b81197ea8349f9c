"""The protocol between the sweep driver and its trials, and the files it leaves in a trial folder.

    <sweep>/trials/<trial id>/        the trial's `train.output_dir`
        mlflow_run_id                 written by the driver when the trial starts (`record_run_id`)
        mlflow_spool.jsonl            the trial logger's spool while MLflow is unreachable
        reports/*.json                epoch results, rank 0 → the trial's Tune function (Ray Train)
        reports/driver.heartbeat      the trial's Tune function is alive (Ray Train workers check)
        reports/driver.stopped        the trial was stopped: its training ends at the next step
        checkpoints/epoch_NNNN/       lora_train checkpoints; eval/  the base-vs-adapter report

Files rather than actors or queues: no extra process per trial, nothing lost when a reader is slow,
and on a cluster the sweep folder is shared storage that every host sees.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sweeps.space import SweepSpace, trial_overrides
from vggt_common.files import atomic_write

RUN_ID_FILE = "mlflow_run_id"
SPOOL_FILE = "mlflow_spool.jsonl"
END_KEY = "__trial_end__"  # marks the training's end status in a report


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its sampled config (passed with `tune.with_parameters`).

    Attributes:
        space: the validated sweep space.
        fixed_overrides: training-config overrides of every trial: the command line's (data root,
            checkpoint) and the validation protocol (`SweepSpace.protocol_overrides`).
        tracking_uri: MLflow server every trial logs to (must be reachable from the workers).
        experiment: MLflow experiment name.
        parent_run_id: the sweep's parent run.
        sweep_dir: the sweep's storage folder (shared storage on a multi-node cluster).
        train_fn: `run_training`-compatible callable; None = `lora_train.train.run_training`.
    """

    space: SweepSpace
    fixed_overrides: dict
    tracking_uri: str | None
    experiment: str
    parent_run_id: str | None
    sweep_dir: str
    train_fn: Callable | None = None

    def use_gpu(self) -> bool:
        return self.space.gpus_per_trial > 0


@dataclass(frozen=True)
class TrialLoop:
    """What `train_worker` needs to train one trial on one rank (picklable: it crosses to Ray Train
    workers).

    Attributes:
        overrides: dotted training-config overrides of this trial (`overrides_for`).
        base_config: the space's base config file, or None for `lora_train` defaults.
        resume: the Tune checkpoint to continue from (a retried or restored trial), or None.
        run_id: the trial's MLflow run, or None when not tracking.
        tracking_uri: the MLflow server.
        train_fn: see `TrialSetup.train_fn`.
        threads: torch threads of one worker.
        metric, mode: the space's metric (reported to Tune every epoch).
        base_cache: folder of the frozen base's cached evaluation, shared by the sweep's trials.
        reports: the report folder when rank 0 hands epochs to a Ray Train driver; None in-trial.
        report_metrics: the sweep's criteria metrics, in every epoch result (NaN when missing).
    """

    overrides: dict
    base_config: str | None
    resume: Any
    run_id: str | None
    tracking_uri: str | None
    train_fn: Callable | None
    threads: int
    metric: str
    mode: str
    base_cache: str
    reports: str | None = None
    report_metrics: tuple[str, ...] = ()


def trial_dir(setup: TrialSetup, trial_id: str) -> Path:
    return Path(setup.sweep_dir) / "trials" / trial_id


def reports_dir(output_dir) -> Path:
    """The trial's report folder: epoch results (Train runs) and the driver's stop marker."""
    return Path(output_dir) / "reports"


def overrides_for(config: dict, setup: TrialSetup, trial_id: str) -> dict:
    """Dotted training-config overrides of one trial (space + fixed ones + per-trial output dir)."""
    overrides = trial_overrides(config, setup.space)
    overrides.update(setup.fixed_overrides)
    overrides["train.output_dir"] = str(trial_dir(setup, trial_id))
    overrides["train.overwrite"] = True  # the trial's folder: a retry without a checkpoint starts afresh
    overrides["train.progress_bar"] = False
    return overrides


def trial_run_name(trial_id: str, overrides: dict) -> str:
    return f"{trial_id}-{overrides.get('lora.strategy', '?')}-r{overrides.get('lora.rank', '?')}"


def record_run_id(setup: TrialSetup, trial_id: str, run_id: str) -> None:
    """Driver side: leave the trial's run id where the trial finds it without asking MLflow."""
    atomic_write(trial_dir(setup, trial_id) / RUN_ID_FILE, run_id)


def recorded_run_id(setup: TrialSetup, trial_id: str) -> str | None:
    path = trial_dir(setup, trial_id) / RUN_ID_FILE
    return path.read_text().strip() if path.is_file() else None


def mark_stopped(setup: TrialSetup, trial_id: str) -> None:
    """Called on the sweep driver when Tune has ended a trial: its training stops at the next step.

    Tune ends a stopped function trainable only when it reuses or kills its process, which may
    be a while later; until then, nothing would stop the training from going on.
    """
    directory = reports_dir(trial_dir(setup, trial_id))
    if directory.is_dir():
        (directory / ReportChannel.STOP).touch()


class ReportChannel:
    """Epoch results from rank 0 to the trial's Tune function: one JSON file per result, in order;
    plus the heartbeat and stop marker by which the workers learn that the trial has ended."""

    HEARTBEAT = "driver.heartbeat"
    STOP = "driver.stopped"
    STALE_AFTER_S = 10.0

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.seen: set[str] = set()

    def stop(self) -> None:
        """Called by the trial driver when Tune stops it: the workers end their training."""
        try:
            (self.directory / self.STOP).touch()
        except OSError:
            pass

    def beat(self) -> None:
        """Called by the trial driver: it is alive (ASHA kills it; then its workers must stop)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / self.HEARTBEAT).touch()

    def driver_gone(self) -> bool:
        if (self.directory / self.STOP).exists():
            return True
        try:
            age = time.time() - (self.directory / self.HEARTBEAT).stat().st_mtime
        except FileNotFoundError:
            return False
        return age > self.STALE_AFTER_S

    def skip_existing(self) -> None:
        if self.directory.is_dir():
            self.seen.update(p.name for p in self.directory.glob("*.json"))

    def put(self, item: dict) -> None:
        atomic_write(self.directory / f"{time.time_ns():020d}-{os.getpid()}.json", json.dumps(item))

    def read_new(self) -> list[dict]:
        if not self.directory.is_dir():
            return []
        new = sorted(p for p in self.directory.glob("*.json") if p.name not in self.seen)
        items = []
        for path in new:
            self.seen.add(path.name)
            items.append(json.loads(path.read_text()))
        return items
