"""The Ray Tune side of a sweep: how many trials at once, the Optuna searcher, the Tuner."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lora_train.errors import UserError
from sweeps.space import SweepSpace
from sweeps.study_storage import study_url


def max_concurrent(space: SweepSpace) -> int:
    """Trials at once: the cluster's GPUs (or CPUs) ÷ what one trial needs, capped by the budget."""
    import ray

    total = ray.cluster_resources()
    if space.gpus_per_trial > 0:
        available = int(total.get("GPU", 0) // space.gpus_per_trial)
        if available < 1:
            raise UserError(f"--gpus-per-trial: {space.gpus_per_trial} GPUs per trial, the Ray "
                            f"cluster has {total.get('GPU', 0):g}")
        if space.pack_gpus:  # down to 1/8 of a GPU each (sweeps/packing.py), as the CPUs allow
            from lora_train.memory import FRACTION_STEP

            available = min(round(total["GPU"] / FRACTION_STEP), int(total.get("CPU", 0) // space.cpus_per_trial))
    else:
        available = int(total.get("CPU", 0) // space.cpus_per_trial)
        if available < 1:
            raise UserError(f"resources.cpus_per_trial: {space.cpus_per_trial} CPUs per trial, the "
                            f"Ray cluster has {total.get('CPU', 0):g}")
    if space.max_concurrent:
        available = min(available, space.max_concurrent)
    return max(1, min(available, space.num_samples))


def build_searcher(space: SweepSpace, sweep_dir: Path, concurrency: int, *, warm_start=None):
    """Optuna's sampler in Ray's searcher (one objective, or several: `metric`/`mode` lists) on the
    sweep's study, seeded with the `warm_start` trials (a `sweeps.warm_start.WarmStart`, or None)."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from sweeps.search import PruningAwareOptunaSearch
    from sweeps.warm_start import add_to_study

    s = space.sampler
    if s["type"] == "random":
        sampler = optuna.samplers.RandomSampler(seed=s["seed"])
    else:
        sampler = optuna.samplers.TPESampler(
            seed=s["seed"], multivariate=s["multivariate"], group=s["group"],
            n_startup_trials=s["n_startup_trials"], constant_liar=True,
        )
    storage = optuna.storages.RDBStorage(study_url(space, sweep_dir), engine_kwargs={"pool_pre_ping": True})
    objectives = space.criteria.objectives
    several = len(objectives) > 1
    searcher = PruningAwareOptunaSearch(
        space=space.define_by_run(), sampler=sampler, storage=storage, study_name=space.name,
        metric=[o.metric for o in objectives] if several else space.metric,
        mode=[o.mode for o in objectives] if several else space.mode,
        points_to_evaluate=space.points_to_evaluate or None, max_epochs=space.max_epochs,
        criteria=space.criteria, warm_start=warm_start,
    )
    if warm_start is not None:  # the study exists (created by the searcher): before the first proposal
        add_to_study(searcher._ot_study, space, warm_start.trials)
    return ConcurrencyLimiter(searcher, max_concurrent=concurrency)


def build_tuner(space: SweepSpace, setup, sweep_dir: Path, storage_path: str, tracker, resume: bool,
                concurrency: int, warm_start: tuple[str, ...] = (), rerun_duplicates: bool = False):
    """A new Tuner, or the sweep's restored one (`resume`): Optuna search (warm-started from the
    trial runs of the MLflow experiments `warm_start` on a fresh start), multi-objective ASHA (one
    objective: Ray's ASHA decisions), our callbacks."""
    from ray import tune

    from sweeps import console
    from sweeps.callbacks import MlflowTrialCallback, ProgressCallback
    from sweeps.interrupts import InterruptCallback
    from sweeps.packing import trial_resources
    from sweeps.schedulers import MultiObjectiveASHA
    from sweeps.trial import train_driver
    from sweeps.warm_start import ReuseOrTrain

    # Trials replay an earlier run's result instead of training when the searcher says so.
    setup = dataclasses.replace(setup, train_fn=ReuseOrTrain(setup.train_fn))

    resources = trial_resources(space, setup)  # per trial config with gpus_per_trial auto
    trainable = tune.with_resources(tune.with_parameters(train_driver, setup=setup), resources)
    scheduler = MultiObjectiveASHA(
        space.criteria.at_rungs(), time_attr="training_iteration", max_t=space.max_epochs,
        grace_period=space.grace_period, reduction_factor=space.reduction_factor,
    )
    # Tune saves callback state with the experiment, not scheduler state: this brings the rung
    # tables back on --resume (the restored Tuner unpickles both together).
    callbacks = [MlflowTrialCallback(setup, tracker), ProgressCallback(space.metric, space.mode, space.max_epochs),
                 InterruptCallback(), scheduler.state_callback()]
    run_config = tune.RunConfig(
        name=space.name, storage_path=storage_path, verbose=0, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=space.max_failures),
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute=space.metric,
            checkpoint_score_order=space.mode,
        ),
    )
    if resume:
        if warm_start:
            console.active().line("--warm-start: ignored on --resume (the study holds the warm-start trials of "
                                  "the first start)")
        return tune.Tuner.restore(str(sweep_dir), trainable, resume_unfinished=True, resume_errored=True)
    warm = read_warm_start(space, setup, tracker, warm_start, rerun_duplicates) if warm_start else None
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(space, sweep_dir, concurrency, warm_start=warm),
            scheduler=scheduler,
            num_samples=space.num_samples, reuse_actors=True,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=run_config,
    )


def read_warm_start(space: SweepSpace, setup, tracker, experiments, rerun_duplicates: bool):
    """The earlier trials that map onto this sweep (scored on the parent's validation windows);
    prints the used/skipped counts and records `sweep.warm_start_trials` on the parent run."""
    from sweeps import console
    from sweeps.warm_start import WARM_START_TAG, load_warm_start
    from tracking.layout import WINDOWS_HASH_TAG

    windows_hash = tracker.get_run(tracker.parent_run_id).data.tags.get(WINDOWS_HASH_TAG)
    warm = load_warm_start(tracker.tracking_uri, experiments, space, setup, windows_hash,
                           rerun_duplicates=rerun_duplicates)
    console.active().line(f"{warm.describe()} (from {', '.join(experiments)})")
    tracker.client.set_tag(tracker.parent_run_id, WARM_START_TAG, str(len(warm.trials)))
    return warm


def extend_budget(sweep_dir: Path, num_samples: int) -> None:
    """Let a resumed sweep run up to `num_samples` trials in all (`--resume --num-samples N`).

    Tune restores its trial counter and budget from the search-generator state it saved; it has
    no option to change the budget of a restored experiment. The state Tune will restore (the
    greatest file name, as Tune picks it) is rewritten with the new budget (never below the trials
    already created).
    """
    import glob

    import ray.cloudpickle as cloudpickle

    from vggt_common.files import atomic_write

    saved = glob.glob(str(sweep_dir / "search_gen_state-*.json"))
    if not saved:
        return
    restored = max(saved)  # the file Tune reads
    with open(restored, "rb") as f:
        state = cloudpickle.load(f)
    if state.get("total_samples") == num_samples:
        return
    state["total_samples"] = max(num_samples, state.get("counter", 0))
    state["finished"] = False
    atomic_write(restored, cloudpickle.dumps(state))
