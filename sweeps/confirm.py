"""The confirm phase: the best search configurations trained again with new seeds, before any choice.

    search trials (Optuna + ASHA, one seed each)
      → search_ranking (sweeps/selection.py): scored on the sweep's validation windows, best first
      → the top_k configurations × `seeds` new seeds (train.seed 1000, 1001, ...; a configuration's
        own search seed is skipped), at the full budget (train.epochs = budget.max_epochs)
      → a second Tuner in the same Ray session: the same trainable (`sweeps.trial.train_driver`), the
        trial configs fixed (`FixedConfigs`), no early stopping; every run a child of the parent,
        tagged sweep.phase=confirm, confirm.of=<search trial id>, confirm.seed (+ confirm.fold)
      → `ConfirmOutcome`: each configuration's evaluated runs (their `eval/metrics.json`), from
        which sweeps/results.py chooses the candidate and decides on the champion

With `cv_folds: k` the training scenes (every scene but the sweep's validation scenes) are split into
k scene-disjoint folds; seed j validates on fold j mod k and trains on the other training scenes
(`data.scenes`, `eval.scenes` overrides), so each seed is scored on scenes the search never
validated on. The windows hash then differs per fold by design; `pool_seeds` joins the folds.

Resumable and idempotent like the search: the confirm runs are found by their tags, a completed one
is never run again, an unfinished one (interrupted, failed, or left by a killed driver) is deleted
(soft, restorable) and run again; Ctrl-C obeys `sweeps/interrupts.py`. Without the phase
(`selection.top_k` or `seeds` 0) the outcome is the best search trial's own evaluation (single seed).
A sweep whose trials write no per-window evaluation (a stand-in trainer) has nothing to confirm.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

from ray.tune import Callback
from ray.tune.search import Searcher

from lora_train.errors import UserError
from sweeps import console
from sweeps.selection import (
    ConfirmRun,
    SearchTrial,
    pooled_intervals,
    search_ranking,
)
from sweeps.space import CONFIRM_KEY, SweepSpace, trial_overrides
from tracking.layout import (
    CONFIRM_FOLD_TAG,
    CONFIRM_METRIC_PREFIX,
    CONFIRM_OF_TAG,
    CONFIRM_SEED_TAG,
    PHASE_TAG,
    STATUS_TAG,
    TRIAL_ID_TAG,
    WINDOWS_HASH_TAG,
)
from tracking.params import best_metric_name

FIRST_CONFIRM_SEED = 1000  # confirm seeds are 1000, 1001, ...: shared by the configurations (paired)


@dataclass(frozen=True)
class EvaluatedRun:
    """A trial run and its final evaluation (`evaluate_checkpoint`'s `metrics.json`)."""

    run_id: str
    trial_id: str
    report: dict

    def scores(self) -> ConfirmRun:
        return ConfirmRun.from_report(self.report)

    def retention(self) -> ConfirmRun | None:
        retention = self.report.get("retention")
        return ConfirmRun.from_report(retention) if retention and "comparison" in retention else None


@dataclass(frozen=True)
class ConfirmOutcome:
    """What the selection decides on.

    Attributes:
        runs: configuration (its search trial id) → its evaluated confirm runs; with the phase off,
            the best search trial alone with its own run.
        num_compared: configurations the candidate is chosen from (the Bonferroni k).
        basis: one line saying what the decision rests on.
        confirmed: whether `runs` are confirm runs (the phase ran); wall_s: its wall time.
    """

    runs: dict[str, list[EvaluatedRun]]
    num_compared: int
    basis: str
    confirmed: bool = False
    wall_s: float = 0.0


@dataclass(frozen=True)
class ConfirmSpec:
    """One confirm run to have: configuration `of`, trained with `seed`, validated on `fold`."""

    of: str
    seed: int
    fold: int | None
    overrides: dict  # training-config overrides on top of the configuration's

    def trial_config(self, search_config: dict) -> dict:
        config = copy.deepcopy(search_config)
        config[CONFIRM_KEY] = {"of": self.of, "seed": self.seed, "fold": self.fold, "overrides": self.overrides}
        return config


def run_confirm_phase(space: SweepSpace, setup, tracker, search_results, sweep_dir: Path,
                      interrupt_grace: float = 60.0) -> ConfirmOutcome:
    """Rank the search, run (or find) the confirm runs, return what the decision rests on.

    Raises:
        SweepInterrupted: Ctrl-C / SIGTERM during the confirm runs (state left resumable).
    """
    runs = tracker.trial_runs()
    tag_search_runs(tracker, runs)
    parent_hash = tracker.get_run(tracker.require_parent()).data.tags.get(WINDOWS_HASH_TAG)
    rule = space.champion_rule
    scored = {*rule.metrics, *(c.metric for c in space.constraints), space.metric}
    ranking = search_ranking([_search_trial(run, scored) for run in runs if _phase(run) == "search"],
                             space.metric, space.mode, parent_hash, rule=rule, constraints=space.constraints)
    search_run = {run.data.tags.get(TRIAL_ID_TAG): run.info.run_id for run in runs}
    evaluated = {t.trial_id: _evaluated(search_run[t.trial_id], t.trial_id, sweep_dir) for t in ranking}
    evaluated = {trial: run for trial, run in evaluated.items() if run is not None}
    top_k, seeds = space.selection["top_k"], space.selection["seeds"]
    if not evaluated:
        return ConfirmOutcome({}, 0, "no search trial has a per-window evaluation (eval/metrics.json) to "
                                    "confirm or decide on")
    if top_k == 0 or seeds == 0:
        best = next(t.trial_id for t in ranking if t.trial_id in evaluated)
        off = "selection.top_k" if top_k == 0 else "selection.seeds"
        return ConfirmOutcome({best: [evaluated[best]]}, len(evaluated),
                              f"single seed: search trial {best}'s own evaluation, the best of {len(evaluated)} "
                              f"(no confirm phase: {off} is 0)")

    started = time.time()
    configs = {Path(r.path).name: r.config for r in search_results if r.path}
    top = [t.trial_id for t in ranking if t.trial_id in configs][:top_k]
    folds = scene_folds(space, setup.fixed_overrides, space.selection["cv_folds"])
    specs = [spec for trial in top for spec in confirm_specs(trial, configs[trial], space, folds)]
    done = completed_confirm_runs(tracker, specs, supersede=True)
    missing = [spec for spec in specs if (spec.of, spec.seed) not in done]
    if missing:
        console.active().line(f"confirm phase: {len(top)} configuration(s) x {seeds} new seed(s) at {space.max_epochs} "
                              f"epoch(s): {len(missing)} run(s) to train, {len(specs) - len(missing)} done before")
        confirm_setup = setup
        if folds:  # each fold's validation scenes come with its trial config
            confirm_setup = dataclasses.replace(setup, fixed_overrides={
                k: v for k, v in setup.fixed_overrides.items() if k != "eval.scenes"})
        _fit(space, confirm_setup, tracker, sweep_dir, [spec.trial_config(configs[spec.of]) for spec in missing],
             interrupt_grace)
        done = completed_confirm_runs(tracker, specs)
    confirmed = {trial: [] for trial in top}
    for spec in specs:
        run = done.get((spec.of, spec.seed))
        scored = run and _evaluated(run.info.run_id, run.data.tags[TRIAL_ID_TAG], sweep_dir)
        if scored:
            confirmed[spec.of].append(scored)
    log_confirmed(tracker, search_run, confirmed)
    wall_s = time.time() - started
    console.active().line(f"confirm phase: {sum(map(len, confirmed.values()))} evaluated run(s) of {len(specs)} "
                          f"in {wall_s:.0f} s")
    basis = f"the best mean of the top {len(top)} configuration(s) over {seeds} new seed(s) each"
    return ConfirmOutcome(confirmed, len(top), basis + (f" on {len(folds[1])} scene folds" if folds else ""),
                          confirmed=True, wall_s=wall_s)


def tag_search_runs(tracker, runs) -> None:
    """`sweep.phase=search` on every trial run without a phase (confirm runs are tagged at start)."""
    from mlflow.entities import RunTag

    for run in runs:
        if PHASE_TAG not in run.data.tags:
            tracker.client.log_batch(run.info.run_id, tags=[RunTag(PHASE_TAG, "search")])
            run.data.tags[PHASE_TAG] = "search"


def confirm_specs(trial_id: str, search_config: dict, space: SweepSpace,
                  folds: tuple[list[str], list[list[str]]] | None) -> list[ConfirmSpec]:
    """The confirm runs of one configuration: `selection.seeds` new seeds (and their folds).

    `folds` is `(training scenes, [fold scenes, ...])` of `scene_folds`, or None.
    """
    own_seed = trial_overrides(search_config, space).get("train.seed")
    seeds = [s for s in range(FIRST_CONFIRM_SEED, FIRST_CONFIRM_SEED + space.selection["seeds"] + 1)
             if s != own_seed][:space.selection["seeds"]]
    specs = []
    for j, seed in enumerate(seeds):
        overrides, fold = {"train.seed": seed}, None
        if folds:
            scenes, fold_scenes = folds
            fold = j % len(fold_scenes)
            overrides.update({"data.scenes": scenes, "eval.scenes": fold_scenes[fold]})
        specs.append(ConfirmSpec(trial_id, seed, fold, overrides))
    return specs


def scene_folds(space: SweepSpace, fixed_overrides: dict, num_folds: int) -> tuple[list[str], list[list[str]]] | None:
    """`(training scenes, k scene-disjoint folds of them)` (round robin over the sorted scenes), or
    None for `num_folds` 0. The training scenes are every scene the sweep does not validate on.

    Raises:
        UserError: fewer training scenes than folds.
    """
    if not num_folds:
        return None
    from lora_train.builders import build_datasets
    from lora_train.config import load_config

    base = str(space.base_config_path) if space.base_config_path else None
    train_set, _ = build_datasets(load_config(base, {**space.base_overrides, **fixed_overrides}))
    scenes = sorted(train_set.scenes)
    if len(scenes) < num_folds:
        raise UserError(f"{space.path}: selection.cv_folds: {num_folds} scene-disjoint folds need at least "
                        f"{num_folds} training scenes, the sweep trains on {len(scenes)} ({', '.join(scenes)})")
    return scenes, [scenes[i::num_folds] for i in range(num_folds)]


def completed_confirm_runs(tracker, specs: list[ConfirmSpec], *, supersede: bool = False) -> dict:
    """(configuration, seed) → its completed confirm run, for `specs`. With `supersede`, their
    unfinished runs (interrupted, failed, or RUNNING after a killed driver) are closed and deleted
    (soft, restorable), as they are about to be run again."""
    wanted = {(spec.of, spec.seed) for spec in specs}
    done = {}
    for run in tracker.trial_runs():  # oldest first
        tags = run.data.tags
        key = (tags.get(CONFIRM_OF_TAG), _int(tags.get(CONFIRM_SEED_TAG)))
        if tags.get(PHASE_TAG) != "confirm" or key not in wanted:
            continue
        if tags.get(STATUS_TAG) == "completed":
            done.setdefault(key, run)
        elif supersede:
            if run.info.status == "RUNNING":
                tracker.close_trial(run.info.run_id, "interrupted", "superseded: the confirm phase runs it again")
            tracker.client.delete_run(run.info.run_id)
    return done


def log_confirmed(tracker, search_run: dict[str, str], confirmed: dict[str, list[EvaluatedRun]]) -> None:
    """On each confirmed search trial's run, its configuration over its confirm runs: `confirm/abs_rel`
    with its 95 % interval (`_ci_low`, `_ci_high`), `confirm/abs_rel_delta` (adapter − base, paired)
    with its interval, `confirm/num_runs`, `confirm/num_scenes` (what the leaderboard shows)."""
    import math

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    for trial, runs in confirmed.items():
        if not runs:
            continue
        absolute, delta = pooled_intervals([run.scores() for run in runs])
        values = {"abs_rel": absolute.mean, "abs_rel_ci_low": absolute.low, "abs_rel_ci_high": absolute.high,
                  "abs_rel_delta": delta.mean, "abs_rel_delta_ci_low": delta.low,
                  "abs_rel_delta_ci_high": delta.high, "num_runs": len(runs), "num_scenes": absolute.num_scenes}
        metrics = [Metric(CONFIRM_METRIC_PREFIX + k, float(v), now, 0) for k, v in values.items() if math.isfinite(v)]
        tracker.client.log_batch(search_run[trial], metrics=metrics)


class FixedConfigs(Searcher):
    """Hands out the given trial configs in order, one per trial, then FINISHED (no search)."""

    def __init__(self, configs: list[dict]):
        super().__init__()
        self.configs = list(configs)

    def suggest(self, trial_id: str):
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.configs, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.configs = pickle.load(f)


class ConfirmTagCallback(Callback):
    """Tags a confirm trial's run (opened just before by `MlflowTrialCallback`) with its phase and
    origin, and names it `confirm-<search trial>-s<seed>`. Holds no client (Tune pickles callbacks)."""

    def __init__(self, setup):
        self.trial_setup = setup

    def on_trial_start(self, iteration, trials, trial, **info):
        from mlflow import MlflowClient
        from mlflow.entities import RunTag

        from sweeps.trial_setup import recorded_run_id

        confirm = trial.config[CONFIRM_KEY]
        tags = {PHASE_TAG: "confirm", CONFIRM_OF_TAG: confirm["of"], CONFIRM_SEED_TAG: str(confirm["seed"]),
                "mlflow.runName": f"confirm-{confirm['of']}-s{confirm['seed']}"}
        if confirm["fold"] is not None:
            tags[CONFIRM_FOLD_TAG] = str(confirm["fold"])
        MlflowClient(self.trial_setup.tracking_uri).log_batch(
            recorded_run_id(self.trial_setup, trial.trial_id), tags=[RunTag(k, v) for k, v in tags.items()])


def _fit(space: SweepSpace, setup, tracker, sweep_dir: Path, configs: list[dict], interrupt_grace: float) -> None:
    """The confirm runs as a second Tuner in this Ray session (no scheduler: every run to the end)."""
    from ray import tune

    from sweeps import interrupts
    from sweeps.callbacks import MlflowTrialCallback, ProgressCallback
    from sweeps.packing import trial_resources
    from sweeps.trial import train_driver
    from sweeps.tuning import max_concurrent

    trainable = tune.with_resources(tune.with_parameters(train_driver, setup=setup), trial_resources(space, setup))
    callbacks = [MlflowTrialCallback(setup, tracker), ConfirmTagCallback(setup),
                 ProgressCallback(space.metric, space.mode, space.max_epochs, total=len(configs)),
                 interrupts.InterruptCallback()]
    attempt = 1 + sum(1 for _ in sweep_dir.glob("confirm-*"))  # a resumed phase is a new Tune experiment
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=FixedConfigs(configs), num_samples=len(configs),
            max_concurrent_trials=min(max_concurrent(space), len(configs)), reuse_actors=True,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=f"confirm-{attempt}", storage_path=str(sweep_dir), verbose=0, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=space.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=space.metric,
                                                    checkpoint_score_order=space.mode),
        ),
    )
    interrupts.install(grace_s=interrupt_grace)
    try:
        tuner.fit()
    finally:
        interrupts.uninstall()
    if interrupts.interrupted():  # sweeps.results.finish closes the runs, the driver adds how to resume
        raise interrupts.SweepInterrupted("interrupted in the confirm phase")


def _evaluated(run_id: str, trial_id: str, sweep_dir: Path) -> EvaluatedRun | None:
    """The trial's final evaluation with base and adapter per window, or None (none written)."""
    path = Path(sweep_dir) / "trials" / trial_id / "eval" / "metrics.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not {"base", "adapter"} <= set(report.get("per_window", {})):
        return None
    return EvaluatedRun(run_id, trial_id, report)


def _search_trial(run, metrics) -> SearchTrial:
    """A search run's scores: each metric's best value where the logger keeps one (`best/*`), else
    its last value."""
    tags, logged = run.data.tags, run.data.metrics
    scores = {m: logged.get(best_metric_name(m), logged.get(m, float("nan"))) for m in metrics}
    return SearchTrial(tags.get(TRIAL_ID_TAG, ""), scores, tags.get(WINDOWS_HASH_TAG),
                       tags.get(STATUS_TAG, run.info.status.lower()))


def _phase(run) -> str:
    return run.data.tags.get(PHASE_TAG, "search")


def _int(text) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None
