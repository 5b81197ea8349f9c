"""The sweep driver: checks, Ray, the parent run, the Tune loop, and how it ends.

    preflight (sweeps/preflight.py: every input checked; nothing written)
      → Ray (local on loopback, or the cluster of --address / $RAY_ADDRESS)
      → sweep folder + MLflow parent run (reopened on --resume)
      → Tuner.fit (sweeps/tuning.py), Ctrl-C handled by sweeps/interrupts.py
      → finish (sweeps/results.py): leaderboard, best trial, champion
        or, interrupted: runs KILLED/interrupted, nothing decided, `SweepInterrupted`
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from sweeps.preflight import PARENT_RUN_FILE, SweepPlan, preflight
from vggt_common.files import atomic_write


def configure_environment() -> None:
    # Worker groups of DDP trials start slowly on small machines; Ray's default is 60 s.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Snapshot the experiment state at every controller step, so a killed driver loses (almost) no
    # started trial; the state of a LoRA sweep is small.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def init_ray(address: str | None, log_to_driver: bool = True):
    """`log_to_driver=False`: trial output stays in the trials' logs (see sweeps/console.py)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        return ray.init(address=address, log_to_driver=log_to_driver)
    # Local: on loopback, with the dashboard (ray[default]): Train's placement-group cleaner
    # queries the State API. Its processes find the cluster through RAY_ADDRESS, so other Ray
    # instances on the same machine cannot confuse them; hence a GCS port chosen up front.
    from tracking.server import free_port

    gcs_port = free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(gcs_port)
    repo_root = str(Path(__file__).resolve().parents[1])
    env_vars = {
        "RAY_ADDRESS": f"127.0.0.1:{gcs_port}",
        "PYTHONPATH": os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH")) if p),
    }
    try:
        return ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
                        _node_ip_address="127.0.0.1", runtime_env={"env_vars": env_vars},
                        log_to_driver=log_to_driver)
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)


def run_sweep(args, train_fn=None) -> dict:
    """Check everything, then run (or resume) the sweep. Returns a summary dict.

    Raises:
        UserError: a bad input (before anything is written).
        SweepInterrupted: SIGINT/SIGTERM; the message is the exact command that resumes.
    """
    from sweeps import console

    configure_environment()
    with console.quiet_environment(quiet=not args.verbose):
        plan = preflight(args, check_data=train_fn is None)
        if train_fn is None:  # the confirm phase's folds, checked before the search rather than after
            from sweeps.confirm import scene_folds

            scene_folds(plan.space, plan.overrides, plan.space.selection["cv_folds"])
        with console.session(plan.sweep_dir, args.verbose) as out:
            return _run(plan, args, train_fn, out)


def _run(plan: SweepPlan, args, train_fn, out) -> dict:
    import ray

    from sweeps import interrupts
    from sweeps.console import ray_description
    from sweeps.results import close_interrupted, finish
    from sweeps.status import record_sweep
    from sweeps.tuning import build_tuner, extend_budget, max_concurrent

    try:
        init_ray(args.address, log_to_driver=args.verbose)
        started = time.time()
        concurrency = max_concurrent(plan.space)
        tracker, setup = open_sweep(plan, train_fn)
        out.header(plan, setup, concurrency, ray_description(args.address or os.environ.get("RAY_ADDRESS")),
                   tracker.ui_url())
        record_sweep(plan, concurrency)
        if plan.resume and args.num_samples is not None:
            extend_budget(plan.sweep_dir, plan.space.num_samples)
        tuner = build_tuner(plan.space, setup, plan.sweep_dir, plan.storage_path, tracker, plan.resume, concurrency,
                            plan.warm_start, plan.rerun_duplicates)
        interrupts.install(grace_s=args.interrupt_grace, notify=out.line)
        try:
            results = tuner.fit()
        finally:
            interrupts.uninstall()
            out.stop_live()
        if interrupts.interrupted():
            closed = close_interrupted(tracker, setup)
            raise interrupts.SweepInterrupted(
                f"interrupted: {closed} trial(s) unfinished, nothing registered; resume with: {resume_command()}")
        try:
            summary = finish(plan.space, setup, tracker, results, plan.sweep_dir, args.champion_base,
                             args.interrupt_grace)
        except interrupts.SweepInterrupted as err:  # in the confirm phase
            raise interrupts.SweepInterrupted(f"{err}; resume with: {resume_command()}") from None
    finally:
        if not (args.address or os.environ.get("RAY_ADDRESS")):
            ray.shutdown()
    summary["wall_s"] = time.time() - started
    summary["tracking_uri"] = plan.tracking_uri
    out.links(summary, tracker)
    out.line(f"sweep {plan.space.name} finished in {summary['wall_s']:.0f} s")
    return summary


def open_sweep(plan: SweepPlan, train_fn):
    """The sweep folder and the MLflow parent run (reopened on resume); the trials' shared setup."""
    from sweeps.trial_setup import TrialSetup
    from tracking.runs import SweepTracker

    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    tracker = SweepTracker(plan.tracking_uri, plan.experiment)
    parent_file = plan.sweep_dir / PARENT_RUN_FILE
    stored = parent_file.read_text().strip() if parent_file.exists() else None
    parent_run_id = tracker.open_parent(plan.space.name, plan.space.summary(), plan.space.source_text, run_id=stored)
    if stored is None:
        atomic_write(parent_file, parent_run_id)
    if plan.validation is not None:
        tracker.log_validation(parent_run_id, plan.validation)
    setup = TrialSetup(
        space=plan.space, fixed_overrides=plan.overrides, tracking_uri=plan.tracking_uri,
        experiment=plan.experiment, parent_run_id=parent_run_id, sweep_dir=str(plan.sweep_dir), train_fn=train_fn,
    )
    return tracker, setup


def resume_command() -> str:
    """The command line this driver was started with, plus `--resume`."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        argv = ["python", os.path.relpath(argv[0]) if Path(argv[0]).is_absolute() else argv[0], *argv[1:]]
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(argv)
