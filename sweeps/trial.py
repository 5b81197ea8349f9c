"""One sweep trial: a Ray Tune function trainable that trains one configuration.

Two launchers (`resources.launcher`; `auto` picks by `workers_per_trial`):

    in_trial (1 worker, the default for it)       the Tune trial process itself
    train_driver(config) ── train_worker(rank 0) ── lora_train.run_training(TrialReporter)
                                                      └─ TuneResults → tune.report per epoch

    ray_train (DDP, workers_per_trial ≥ 2)         Ray Train workers (gloo on CPU, NCCL on GPU)
    train_driver(config) ── TorchTrainer.fit() ──►  train_worker(loop_config) on every rank
         ▲                                              └─ lora_train.run_training(reporter)
         │  epoch results (metrics, checkpoint dir)          rank 0: TrialReporter.on_epoch
         └──────── ReportChannel (JSON files) ◄──────────────── ─ MetricLogger (MLflow)

Either way Tune gets `tune.report(metrics, checkpoint)` per epoch → ASHA decides → the trial is
stopped or goes on. A one-worker TorchTrainer would add a controller and a worker process to every
trial (15-20 s of start-up each on a small machine) for no parallelism; the trial's own process
is reused from trial to trial (`reuse_actors`), so it imports torch and builds caches once.

Why a report channel and not `ray.train.report` + `TuneReportCallback`: `ray.train.report` is a
barrier that every worker must call the same number of times, but `lora_train` calls
`Reporter.on_epoch` on rank 0 only (see docs/interfaces.md). Rank 0 therefore hands each epoch's
result to the trial driver, which reports it to Tune with the epoch's adapter checkpoint.

Tune persists each checkpoint, and a retried trial resumes the training from it (`resume_from`).
Tune stops a trial by ending its thread only at its next report; the driver-side callback therefore
also drops a stop marker (`mark_stopped`) that the training checks every step.

The trial's MLflow child run is created idempotently (by the driver-side callback in
`sweeps/callbacks.py` and, should that not have happened yet, here), so retries and restored
sweeps log into the same run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lora_train.reporting import Reporter
from sweeps.space import SweepSpace, trial_overrides

SPOOL_FILE = "mlflow_spool.jsonl"  # the trial MetricLogger's spool, in its output dir

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
END_KEY = "__trial_end__"


@dataclass
class TrialSetup:
    """Everything a trial needs besides its sampled config (passed with `tune.with_parameters`).

    Attributes:
        space: the validated sweep space.
        cli_overrides: training-config overrides from the command line (data root, checkpoint).
        tracking_uri: MLflow server every trial logs to (must be reachable from the workers).
        experiment: MLflow experiment name.
        parent_run_id: the sweep's parent run.
        sweep_dir: the sweep's storage folder (shared storage on a multi-node cluster).
        train_fn: `run_training`-compatible callable; None = `lora_train.train.run_training`.
    """

    space: SweepSpace
    cli_overrides: dict
    tracking_uri: str | None
    experiment: str
    parent_run_id: str | None
    sweep_dir: str
    train_fn: Callable | None = None
    extra_env: dict = field(default_factory=dict)

    def use_gpu(self) -> bool:
        return self.space.gpus_per_trial > 0


def overrides_for(config: dict, setup: TrialSetup, trial_id: str) -> dict:
    """Dotted training-config overrides of one trial (space + CLI + per-trial output dir)."""
    overrides = trial_overrides(config, setup.space)
    overrides.update(setup.cli_overrides)
    overrides["train.output_dir"] = str(trial_dir(setup, trial_id))
    overrides["train.progress_bar"] = False
    return overrides


def trial_run_name(trial_id: str, overrides: dict) -> str:
    return f"{trial_id}-{overrides.get('lora.strategy', '?')}-r{overrides.get('lora.rank', '?')}"


# ------------------------------------------------------------------------------ Tune trainable


def train_driver(config: dict, setup: TrialSetup) -> None:
    """The Tune function trainable: train this trial and report its epochs to Tune.

    One-worker trials train right here (`SweepSpace.runs_in_trial`); DDP trials run a Ray Train
    `TorchTrainer` whose rank 0 hands its epochs to this function through a `ReportChannel`.
    """
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    overrides = overrides_for(config, setup, trial_id)
    run_id = open_trial_run(setup, trial_id, overrides)
    space = setup.space
    loop_config = {
        "overrides": overrides, "base_config": _base_path(space),
        "resume": tune.get_checkpoint(),  # set when Tune retries this trial or restores the sweep
        "run_id": run_id, "tracking_uri": setup.tracking_uri, "train_fn": setup.train_fn,
        "threads": max(1, int(space.cpus_per_trial / space.workers_per_trial)),
        "metric": space.metric, "mode": space.mode, "env": setup.extra_env,
        "base_cache": str(Path(setup.sweep_dir) / "base_eval"),  # the frozen base, evaluated once
    }
    if space.runs_in_trial():
        results = TuneResults(space.metric, reports_dir(overrides["train.output_dir"]))
        results.stop_file.unlink(missing_ok=True)  # left by an earlier attempt of this trial
        try:
            train_worker(loop_config, rank=0, results=results)
        except TrialStopped:  # Tune stopped this trial (ASHA) or hands the actor to the next one
            pass
        return
    _drive_train_run(loop_config, setup, trial_id)


def _drive_train_run(loop_config: dict, setup: TrialSetup, trial_id: str) -> None:
    """Run the trial as a Ray Train run of `workers_per_trial` DDP workers; forward rank 0's epochs."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    reports = ReportChannel(reports_dir(loop_config["overrides"]["train.output_dir"]))
    reports.skip_existing()  # left by an earlier attempt of this trial
    (reports.directory / ReportChannel.STOP).unlink(missing_ok=True)
    reports.beat()
    space = setup.space
    workers = space.workers_per_trial
    per_worker = {"CPU": space.cpus_per_trial / workers}
    if setup.use_gpu():
        per_worker["GPU"] = space.gpus_per_trial / workers
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={**loop_config, "reports": str(reports.directory)},
        torch_config=TorchConfig(backend="nccl" if setup.use_gpu() else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=setup.use_gpu(), resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"train-trial_id={trial_id}",  # stable: a re-launched driver finds its Train run
            storage_path=str(Path(setup.sweep_dir) / "train"),
        ),
    )

    errors: list[BaseException] = []

    def fit():
        try:
            trainer.fit()
        except BaseException as err:  # re-raised in the trial's thread below
            errors.append(err)

    thread = threading.Thread(target=fit, name=f"train-{trial_id}", daemon=True)
    thread.start()
    try:
        _forward_reports(reports, thread, space.metric)
    except BaseException:  # Tune stops the trial (ASHA) by ending this thread: stop the workers too
        reports.stop()
        raise
    thread.join()
    if errors:
        raise errors[0]


def _forward_reports(reports: "ReportChannel", thread: threading.Thread, metric: str) -> None:
    """Report rank 0's epoch results to Tune as they arrive, until the Train run ends."""
    tune_side = TuneResults(metric, reports.directory)
    while True:
        alive = thread.is_alive()
        reports.beat()
        if tune_side.driver_gone():
            raise SystemExit(0)  # Tune's graceful end of a function trainable; the workers are told
        for item in reports.read_new():
            tune_side.put(item)
        if not alive:
            break
        time.sleep(0.2)


def reports_dir(output_dir) -> Path:
    """The trial's report folder: epoch results (Train runs) and the driver's stop marker."""
    return Path(output_dir) / "reports"


def mark_stopped(setup: TrialSetup, trial_id: str) -> None:
    """Called on the sweep driver when Tune has ended a trial: its training stops at the next step.

    Tune ends a stopped function trainable only when it reuses or kills its process, which may
    be a while later; until then, nothing would stop the training from going on.
    """
    directory = reports_dir(trial_dir(setup, trial_id))
    if directory.is_dir():
        (directory / ReportChannel.STOP).touch()


class TuneResults:
    """Epoch results straight to Tune, from the trial's own thread (rank 0 of an in-trial run, or
    the driver of a Train run)."""

    def __init__(self, metric: str, directory: Path):
        self.metric = metric
        self.stop_file = Path(directory) / ReportChannel.STOP
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)

    def put(self, item: dict) -> None:
        from ray import tune

        item = dict(item)
        if END_KEY in item:
            if item[END_KEY] == "diverged":  # one last result so the driver side knows why
                tune.report({self.metric: float("nan"), "train_status": "diverged",
                             "stop_reason": item.get("reason", "")})
            return
        checkpoint_dir = item.pop("checkpoint_dir", None)
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(item, checkpoint=checkpoint)

    def driver_gone(self) -> bool:
        """Has Tune stopped this trial? Tune reports asynchronously, so a stopped function trainable
        learns it from the driver's marker (`mark_stopped`) or its session's stop event (set when
        Tune hands the process to the next trial, which it waits 2 s for before killing it)."""
        from ray.train._internal.session import get_session  # the session Tune runs trainables in

        stop_event = getattr(get_session(), "stop_event", None)
        return (stop_event is not None and stop_event.is_set()) or self.stop_file.exists()


class ReportChannel:
    """Epoch results from rank 0 to the trial driver: one JSON file per result, read in order.

    A folder in the trial's output dir (on shared storage in a multi-node cluster) instead of a
    queue actor: no extra process per trial, and nothing is lost if the reader is slow.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.seen: set[str] = set()

    HEARTBEAT = "driver.heartbeat"
    STOP = "driver.stopped"
    STALE_AFTER_S = 10.0

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
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}.json"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_text(json.dumps(item))
        tmp.replace(self.directory / name)

    def read_new(self) -> list[dict]:
        if not self.directory.is_dir():
            return []
        new = sorted(p for p in self.directory.glob("*.json") if p.name not in self.seen)
        items = []
        for path in new:
            self.seen.add(path.name)
            items.append(json.loads(path.read_text()))
        return items


RUN_ID_FILE = "mlflow_run_id"  # in the trial's output dir, written by the driver-side callback


def trial_dir(setup: TrialSetup, trial_id: str) -> Path:
    return Path(setup.sweep_dir) / "trials" / trial_id


def record_run_id(setup: TrialSetup, trial_id: str, run_id: str) -> None:
    """Driver side: leave the trial's run id where the trial finds it without asking MLflow."""
    directory = trial_dir(setup, trial_id)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{RUN_ID_FILE}.tmp"
    tmp.write_text(run_id)
    tmp.replace(directory / RUN_ID_FILE)


def open_trial_run(setup: TrialSetup, trial_id: str, overrides: dict) -> str | None:
    """The trial's MLflow child run (idempotent: returns the existing one on retry/restore).

    Tune calls the driver-side callback that opens the run before the trial's function runs, so
    the id is normally on disk (`record_run_id`); a trial process then never imports the MLflow
    client (2 s of start-up), its logger speaks the REST API.
    """
    if setup.parent_run_id is None:
        return None
    recorded = trial_dir(setup, trial_id) / RUN_ID_FILE
    if recorded.is_file():
        return recorded.read_text().strip()
    from tracking.runs import SweepTracker

    tracker = SweepTracker(setup.tracking_uri, setup.experiment, parent_run_id=setup.parent_run_id)
    return tracker.open_trial(trial_id, params=overrides, run_name=trial_run_name(trial_id, overrides))


def _base_path(space: SweepSpace) -> str | None:
    return str(space.base_config_path) if space.base_config_path else None


# ------------------------------------------------------------------------------ Train workers


def train_worker(loop_config: dict, rank: int | None = None, results=None) -> None:
    """Build the config, train, report epochs from rank 0.

    Runs on every Ray Train worker (`rank`/`results` from the Train context and the report
    channel) or, for an in-trial run, in the trial itself (rank 0, results straight to Tune).
    """
    import torch

    from lora_train.config import load_config

    for key, value in (loop_config.get("env") or {}).items():
        os.environ[key] = str(value)
    torch.set_num_threads(loop_config["threads"])
    if rank is None:
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        results = ReportChannel(Path(loop_config["reports"]))
    config = load_config(loop_config["base_config"], loop_config["overrides"])

    resume_from = None
    checkpoint = loop_config["resume"]
    if checkpoint is not None:  # every rank needs the adapter and trainer state
        resume_from = tempfile.mkdtemp(prefix="resume-")
        checkpoint.to_directory(resume_from)

    reporter: Reporter = Reporter()
    if rank == 0:
        reporter = TrialReporter(
            results, loop_config["tracking_uri"], loop_config["run_id"],
            spool_dir=Path(config.train.output_dir), metric=loop_config["metric"],
            mode=loop_config["mode"], overrides=loop_config["overrides"], final_epoch=config.train.epochs,
            base_cache=loop_config.get("base_cache"),
        )
    train_fn = loop_config["train_fn"]
    if train_fn is None:
        from lora_train.train import run_training as train_fn
    try:
        train_fn(config, reporter, resume_from=resume_from)
    finally:
        if rank == 0:
            reporter.close()
        if resume_from:
            shutil.rmtree(resume_from, ignore_errors=True)


class TrialStopped(Exception):
    """Raised in rank 0's reporter when the trial driver is gone, to end orphaned training."""


class TrialReporter(Reporter):
    """Rank 0's reporter: epochs → the trial driver (→ Tune, ASHA); steps/epochs/files → MLflow.

    MLflow gets every step's metrics, every epoch's validation metrics and adapter
    (`adapter/`), the resolved `config.yaml`, and `eval/metrics.json` + `eval/visualizations/*.png`
    of the best epoch. Tracking problems never fail the trial (the logger spools and replays).

    `results` takes the epoch results: a `ReportChannel` (Ray Train worker → trial driver) or
    `TuneResults` (in-trial run). After the last epoch (`final_epoch`) and before its result goes
    out, the best adapter is compared with the frozen base: Tune ends a trial as soon as it
    reports its last epoch, so nothing may come after that report.
    """

    def __init__(self, results, tracking_uri, run_id, spool_dir: Path, metric: str, mode: str,
                 overrides: dict, final_epoch: int | None = None, base_cache: str | None = None):
        self.results = results
        self.stopped = False
        self.run_id = run_id
        self.metric, self.mode = metric, mode
        self.final_epoch = final_epoch
        self.base_cache = base_cache
        self.best_value = None
        self.best_epoch = None
        self.logged_params = False
        self.overrides = overrides
        self.output_dir = spool_dir
        self.logger = None
        if run_id is not None:
            from tracking.logger import MetricLogger

            spool_dir.mkdir(parents=True, exist_ok=True)
            self.logger = MetricLogger(
                tracking_uri, run_id, spool_path=str(spool_dir / SPOOL_FILE),
                best={metric: mode, "val/abs_rel": "min"},
            )

    def _check_driver(self) -> None:
        if self.results.driver_gone():  # the trial was stopped (ASHA) or its driver died
            self.stopped = True
            raise TrialStopped("the trial's driver is gone (stopped by the scheduler); stopping training")

    def on_step(self, step: int, metrics: dict) -> None:
        self._check_driver()
        if self.logger:
            self.logger.log_metrics(_numeric(metrics), step=step)

    def on_epoch(self, epoch: int, metrics: dict, checkpoint_dir: str | None) -> None:
        self._check_driver()
        metrics = _numeric(metrics)
        value = metrics.get(self.metric)
        improved = value is not None and value == value and checkpoint_dir is not None and self._is_better(value)
        if improved:
            self.best_value, self.best_epoch = value, epoch
        if self.logger:
            self._log_epoch(epoch, metrics, checkpoint_dir, improved)
        if epoch == self.final_epoch:
            self.compare_with_base()
        # Tune needs the metric in every result; NaN makes ASHA stop a broken trial.
        report = {**metrics, "epoch": epoch}
        report.setdefault(self.metric, float("nan"))
        if checkpoint_dir:
            report["checkpoint_dir"] = checkpoint_dir
        self.results.put(report)

    def _log_epoch(self, epoch, metrics, checkpoint_dir, improved: bool):
        step = int(metrics.get("step", epoch))
        self.logger.log_metrics({k: v for k, v in metrics.items() if k not in ("step",)}, step=step)
        if not self.logged_params and checkpoint_dir:
            self.logger.log_params({"lora.trainable_params": adapter_param_count(checkpoint_dir)})
            config_yaml = self.output_dir / "config.yaml"
            if config_yaml.is_file():
                self.logger.log_artifacts(str(_single_file_dir(config_yaml)), "")
            self.logged_params = True
        if checkpoint_dir:
            with tempfile.TemporaryDirectory() as tmp:
                for name in ADAPTER_FILES:
                    if (Path(checkpoint_dir) / name).is_file():
                        shutil.copy2(Path(checkpoint_dir) / name, Path(tmp) / name)
                self.logger.log_artifacts(tmp, "adapter")
        if improved:
            self._log_eval(epoch, metrics, checkpoint_dir)
        self.logger.flush()

    def _is_better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def _log_eval(self, epoch, metrics, checkpoint_dir):
        """`eval/metrics.json` and `eval/visualizations/*.png` of the best epoch so far."""
        with tempfile.TemporaryDirectory() as tmp:
            eval_dir = Path(tmp)
            record = {"epoch": epoch, "checkpoint": str(checkpoint_dir),
                      "metrics": {k: v for k, v in metrics.items() if k.startswith("val/")}}
            (eval_dir / "metrics.json").write_text(json.dumps(record, indent=2, sort_keys=True))
            for png_dir in (Path(checkpoint_dir) / "visualizations", self.output_dir / "visualizations"):
                if png_dir.is_dir():
                    shutil.copytree(png_dir, eval_dir / "visualizations", dirs_exist_ok=True)
                    break
            self.logger.log_artifacts(str(eval_dir), "eval")

    def on_end(self, status: str, reason: str = "") -> None:
        if self.stopped:  # the driver side has closed the run already
            return
        if self.logger:
            self.logger.set_tags({"trial.train_status": status, **({"trial.stop_reason": reason}
                                                                   if status != "completed" else {})})
            self.logger.flush()
        self.results.put({END_KEY: status, "reason": reason})

    def compare_with_base(self) -> None:
        """After the last epoch: evaluate the best adapter against the frozen base (with PNGs).

        Writes `<output_dir>/eval/metrics.json` (base and adapter) + `visualizations/*.png` and
        logs them as the run's `eval/` artifacts, plus `eval/base_abs_rel`, `eval/adapter_abs_rel`.
        """
        epoch = self.best_epoch
        checkpoint = self.output_dir / "checkpoints" / f"epoch_{int(epoch):04d}" if epoch else None
        if checkpoint is None or not (checkpoint / "adapter_config.json").is_file():
            return
        from lora_train.evaluate import main as evaluate

        eval_dir = self.output_dir / "eval"
        try:  # the trial's result stands even if this extra evaluation fails
            evaluate(["--adapter", str(checkpoint), "--compare-base", "--out", str(eval_dir)]
                     + (["--base-cache", self.base_cache] if self.base_cache else []))
            results = json.loads((eval_dir / "metrics.json").read_text()).get("results", {})
        except (Exception, SystemExit) as err:
            print(f"final evaluation of {checkpoint} failed: {err!r}", flush=True)
            return
        if self.logger:
            self.logger.log_metrics({f"eval/{label}_{key}": value for label, values in results.items()
                                     for key, value in values.items() if key in ("abs_rel", "delta1", "tau103")},
                                    step=int(epoch))
            self.logger.log_artifacts(str(eval_dir), "eval")

    def close(self) -> None:
        if self.logger:
            try:
                self.logger.flush()
                self.logger.close()
            except Exception:  # tracking must never fail a trial
                pass


def adapter_param_count(checkpoint_dir: str) -> int:
    """Number of trainable parameters saved in a PEFT adapter file."""
    from safetensors import safe_open

    total = 0
    path = Path(checkpoint_dir) / "adapter_model.safetensors"
    if not path.is_file():
        return 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            total += n
    return total


def _single_file_dir(path: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="artifact-"))
    shutil.copy2(path, tmp / path.name)
    return tmp


def _numeric(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out
