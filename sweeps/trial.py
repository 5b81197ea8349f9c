"""One sweep trial: a Ray Tune function trainable that trains one configuration.

Two launchers (`resources.launcher`; `auto` picks by `workers_per_trial`):

    in_trial (1 worker, the default for it)       the Tune trial process itself
    train_driver(config) ── train_worker(rank 0) ── lora_train.run_training(TrialReporter)
                                                      └─ TuneResults → tune.report per epoch

    ray_train (DDP, workers_per_trial ≥ 2)         Ray Train workers (gloo on CPU, NCCL on GPU)
    train_driver(config) ── TorchTrainer.fit() ──►  train_worker(TrialLoop) on every rank
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
A one-process trial that runs out of GPU memory before its first result is retried in place with
gradient checkpointing, then half the micro-batch (`train_fitting_memory`, `sweeps/packing.py`).
Tune stops a trial by ending its thread only at its next report; the driver-side callback therefore
also drops a stop marker (`mark_stopped`) that the training checks every step.

The trial's MLflow child run is created idempotently (by the driver-side callback in
`sweeps/callbacks.py` and, should that not have happened yet, here), so retries and restored
sweeps log into the same run. The files that pass between driver and trial are described in
`sweeps/trial_setup.py`; rank 0's reporter is `sweeps/trial_reporter.py`.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
import time
from pathlib import Path

from lora_train.reporting import Reporter
from sweeps.trial_reporter import TrialReporter, TrialStopped

OOM_RETRIES_TAG = "trial.oom_retries"
OOM_FALLBACK_TAG = "trial.oom_fallback"
GPU_SHARE_TAG = "trial.gpu_share"  # the GPU fraction a packed trial got (gpus_per_trial auto)
from sweeps.trial_setup import (
    END_KEY,
    ReportChannel,
    TrialLoop,
    TrialSetup,
    overrides_for,
    recorded_run_id,
    reports_dir,
    trial_dir,
    trial_run_name,
)


def train_driver(config: dict, setup: TrialSetup) -> None:
    """The Tune function trainable: train this trial and report its epochs to Tune.

    One-worker trials train right here (`SweepSpace.runs_in_trial`); DDP trials run a Ray Train
    `TorchTrainer` whose rank 0 hands its epochs to this function through a `ReportChannel`.
    """
    from ray import tune

    from sweeps.console import TRIAL_LOG, trial_output

    trial_id = tune.get_context().get_trial_id()
    with trial_output(trial_dir(setup, trial_id) / TRIAL_LOG):  # the trial's output, also in its folder
        _train_trial(config, setup, trial_id)


def _train_trial(config: dict, setup: TrialSetup, trial_id: str) -> None:
    from ray import tune

    overrides = overrides_for(config, setup, trial_id)
    space = setup.space
    loop = TrialLoop(
        overrides=overrides, base_config=str(space.base_config_path) if space.base_config_path else None,
        resume=tune.get_checkpoint(),  # set when Tune retries this trial or restores the sweep
        run_id=open_trial_run(setup, trial_id, overrides), tracking_uri=setup.tracking_uri,
        train_fn=setup.train_fn, threads=max(1, int(space.cpus_per_trial / space.workers_per_trial)),
        metric=space.metric, mode=space.mode, report_metrics=space.criteria.metrics,
        base_cache=str(Path(setup.sweep_dir) / "base_eval"),  # the frozen base, evaluated once
    )
    if space.runs_in_trial():
        results = TuneResults(space.criteria.metrics, reports_dir(overrides["train.output_dir"]))
        results.stop_file.unlink(missing_ok=True)  # left by an earlier attempt of this trial
        tags = {}
        if space.pack_gpus:  # the share Ray granted (sweeps.packing.PackedResources)
            tags[GPU_SHARE_TAG] = f"{tune.get_context().get_trial_resources().required_resources.get('GPU', 0):g}"
        try:
            train_fitting_memory(loop, results, tags=tags)
        except TrialStopped:  # Tune stopped this trial (ASHA) or hands the actor to the next one
            pass
        return
    _drive_train_run(loop, setup, trial_id)


class TrialOutOfMemory(RuntimeError):
    """The trial ran out of GPU memory even with the smaller settings of `sweeps.packing.oom_fallback`."""


def train_fitting_memory(loop: TrialLoop, results: "TuneResults", tags: dict | None = None) -> None:
    """`train_worker` in this process; a CUDA out-of-memory error before the first epoch's result is
    retried here with `sweeps.packing.oom_fallback`'s smaller settings, at most `MAX_OOM_RETRIES`
    times, then raised as `TrialOutOfMemory` (one line: the trial ends failed with it). The run is
    tagged `trial.oom_retries` (and, after a retry, `trial.oom_fallback`: the overrides that fit).

    A later out-of-memory error (after an epoch went to Tune) is raised as it is: a restart from
    scratch would report epochs twice; Tune's own retry resumes from the checkpoint.
    """
    import torch

    from lora_train.config import load_config
    from lora_train.runtime import resolve_device
    from lora_train.train import release_memory
    from sweeps.packing import MAX_OOM_RETRIES, oom_fallback

    changes, retries = {}, 0
    while True:
        attempt_tags = {**(tags or {}), OOM_RETRIES_TAG: str(retries)}
        if changes:
            attempt_tags[OOM_FALLBACK_TAG] = ", ".join(f"{k}={v}" for k, v in changes.items())
        attempt = dataclasses.replace(loop, overrides={**loop.overrides, **changes})
        try:
            train_worker(attempt, rank=0, results=results, tags=attempt_tags)
            return
        except torch.cuda.OutOfMemoryError as err:
            if results.epochs_reported:
                raise
            error = f"{err}".strip().splitlines()[0] if str(err).strip() else "CUDA out of memory"
        config = load_config(attempt.base_config, attempt.overrides)  # outside the except: the run's frames are gone
        release_memory(resolve_device(config.train.device))
        fallback = oom_fallback(config) if retries < MAX_OOM_RETRIES else None
        if fallback is None:
            raise TrialOutOfMemory(
                f"out of GPU memory with gradient checkpointing {config.model.gradient_checkpointing} and micro-batch "
                f"{config.data.batch_size} after {retries} retr{'y' if retries == 1 else 'ies'}: {error}")
        print(f"out of GPU memory ({error}); retrying with {fallback}", flush=True)
        changes.update(fallback)
        retries += 1


def _drive_train_run(loop: TrialLoop, setup: TrialSetup, trial_id: str) -> None:
    """Run the trial as a Ray Train run of `workers_per_trial` DDP workers; forward rank 0's epochs."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    reports = ReportChannel(reports_dir(loop.overrides["train.output_dir"]))
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
        train_loop_config=dataclasses.replace(loop, reports=str(reports.directory)),
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
        _forward_reports(reports, thread, space.criteria.metrics)
    except BaseException:  # Tune stops the trial (ASHA) by ending this thread: stop the workers too
        reports.stop()
        raise
    thread.join()
    if errors:
        raise errors[0]


def _forward_reports(reports: "ReportChannel", thread: threading.Thread, metrics: tuple[str, ...]) -> None:
    """Report rank 0's epoch results to Tune as they arrive, until the Train run ends."""
    tune_side = TuneResults(metrics, reports.directory)
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


class TuneResults:
    """Epoch results straight to Tune, from the trial's own thread (rank 0 of an in-trial run, or
    the driver of a Train run)."""

    def __init__(self, metrics: tuple[str, ...], directory: Path):
        self.metrics = metrics  # the sweep's criteria: Tune wants them in every result
        self.stop_file = Path(directory) / ReportChannel.STOP
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.epochs_reported = 0

    def put(self, item: dict) -> None:
        from ray import tune

        item = dict(item)
        if END_KEY in item:
            if item[END_KEY] == "diverged":  # one last result so the driver side knows why
                tune.report({**dict.fromkeys(self.metrics, float("nan")), "train_status": "diverged",
                             "stop_reason": item.get("reason", "")})
            return
        checkpoint_dir = item.pop("checkpoint_dir", None)
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(item, checkpoint=checkpoint)
        self.epochs_reported += 1

    def driver_gone(self) -> bool:
        """Has Tune stopped this trial? Tune reports asynchronously, so a stopped function trainable
        learns it from the driver's marker (`mark_stopped`) or its session's stop event (set when
        Tune hands the process to the next trial, which it waits 2 s for before killing it)."""
        from ray.train._internal.session import (
            get_session,  # the session Tune runs trainables in
        )

        stop_event = getattr(get_session(), "stop_event", None)
        return (stop_event is not None and stop_event.is_set()) or self.stop_file.exists()


def open_trial_run(setup: TrialSetup, trial_id: str, overrides: dict) -> str | None:
    """The trial's MLflow child run (idempotent: returns the existing one on retry/restore).

    Tune calls the driver-side callback that opens the run before the trial's function runs, so
    the id is normally on disk (`record_run_id`); a trial process then never imports the MLflow
    client (2 s of start-up), its logger speaks the REST API.
    """
    if setup.parent_run_id is None:
        return None
    recorded = recorded_run_id(setup, trial_id)
    if recorded:
        return recorded
    from tracking.runs import SweepTracker

    tracker = SweepTracker(setup.tracking_uri, setup.experiment, parent_run_id=setup.parent_run_id)
    return tracker.open_trial(trial_id, params=overrides, run_name=trial_run_name(trial_id, overrides))


def train_worker(loop: TrialLoop, rank: int | None = None, results=None, tags: dict | None = None) -> None:
    """Build the config, train, report epochs from rank 0.

    Runs on every Ray Train worker (`rank`/`results` from the Train context and the report
    channel) or, for an in-trial run, in the trial itself (rank 0, results straight to Tune).
    `tags` go on the trial's MLflow run.
    """
    import torch

    from lora_train.checkpointing import TRAINER_STATE, load_trainer_state
    from lora_train.config import load_config

    torch.set_num_threads(loop.threads)
    if rank is None:
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        results = ReportChannel(Path(loop.reports))
    config = load_config(loop.base_config, loop.overrides)

    resume_from, resumed = None, None
    if loop.resume is not None:  # every rank needs the adapter and trainer state
        resume_from = tempfile.mkdtemp(prefix="resume-")
        loop.resume.to_directory(resume_from)
        if (Path(resume_from) / TRAINER_STATE).is_file():  # a stand-in trainer keeps its own state
            resumed = load_trainer_state(resume_from)

    reporter: Reporter = Reporter()
    if rank == 0:
        reporter = TrialReporter(
            results, loop.tracking_uri, loop.run_id, output_dir=Path(config.train.output_dir),
            metric=loop.metric, mode=loop.mode, final_epoch=config.train.epochs, base_cache=loop.base_cache,
            report_metrics=loop.report_metrics,
            resumed=resumed or ({} if resume_from else None), tags=tags,
        )
    train_fn = loop.train_fn
    if train_fn is None:
        from lora_train.train import run_training as train_fn
    try:
        train_fn(config, reporter, resume_from=resume_from)
    finally:
        if rank == 0:
            reporter.close()
        if resume_from:
            shutil.rmtree(resume_from, ignore_errors=True)
