"""Multi-objective ASHA (Schmucker et al. 2021) as a Ray Tune scheduler, stopping like Ray's ASHA.

Rungs sit at `grace_period * reduction_factor**k` up to `max_t`. When a trial reports a result at
or past a rung it has not been recorded at, the scheduler decides at once (asynchronous: it never
waits for a rung to fill) and records the result there. The first trial at an empty rung
continues. Otherwise, with n trials already recorded at the rung:

- several objectives or any constraint: the trial continues iff at most floor((n - 1) / eta) of
  them rank ahead of it by `sweeps.pareto.rank` (constrained non-dominated sorting, crowding
  distance, trial id; infeasible trials rank last). That count is exactly what Ray's percentile
  cutoff allows when the percentile falls on a recorded value; between two values Ray
  interpolates the metric, which several objectives cannot do, and this rule takes the stricter
  neighbour.
- one objective and no constraint: Ray's own rule, so the decisions equal `ASHAScheduler`'s for
  the same results: continue iff the value is at least the (1 - 1/eta) percentile (linear
  interpolation) of the values recorded there, best-is-larger.

One deliberate difference from Ray: a non-finite objective value (a diverged trial) is stopped
at any non-empty rung; Ray keeps it running because `nan < cutoff` is false. Also unlike Ray,
the rungs are computed exactly (Ray's floating-point logarithm drops the top rung for, e.g.,
`max_t=1000, reduction_factor=10`), and there is a single bracket.

Results without `time_attr` or any criteria metric are skipped (no decision, nothing recorded), as
Ray skips results without its metric: report constraint metrics with every result. With
`stop_last_trials`, a result at `max_t` stops the trial.

Tune 2.60 checkpoints the searcher and the callbacks with the experiment, not the scheduler: a
restored experiment gets the scheduler as it was pickled when the Tuner was created. Add
`scheduler.state_callback()` to `RunConfig(callbacks=...)` so that the rung tables come back too.
"""

from __future__ import annotations

import math
import pickle
from typing import TYPE_CHECKING

import numpy as np
from ray.tune.callback import Callback
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from sweeps.pareto import Criteria

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

FINISHED = "FINISHED"  # decision column of a result recorded when the trial ended on its own


def rung_milestones(grace_period: float, max_t: float, reduction_factor: float) -> list[float]:
    """`grace_period * reduction_factor**k` for k = 0, 1, ... while it is at most `max_t`."""
    milestones, k = [], 0
    while (m := grace_period * reduction_factor**k) <= max_t * (1 + 1e-12):
        milestones.append(m)
        k += 1
    return milestones


class MultiObjectiveASHA(FIFOScheduler):
    """Stopping ASHA that ranks trials by several objectives and constraints (see module doc).

    Args:
        criteria: objectives and constraints (`sweeps.pareto.Criteria`).
        time_attr: monotonically increasing result key the rungs are measured in.
        max_t: the longest a trial runs, in `time_attr` units.
        grace_period: the first rung.
        reduction_factor: eta: rungs are eta times apart and about 1/eta of a rung continues.
        stop_last_trials: stop a trial whose result reaches `max_t`.
    """

    def __init__(self, criteria: Criteria, *, time_attr: str = "training_iteration", max_t: float = 100,
                 grace_period: float = 1, reduction_factor: float = 4, stop_last_trials: bool = True):
        if not (0 < grace_period <= max_t):
            raise ValueError(f"need 0 < grace_period <= max_t, got grace_period={grace_period}, max_t={max_t}")
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        super().__init__()
        self.criteria = criteria
        self._metric = criteria.objectives[0].metric  # Tune checks that results carry it
        self._time_attr = time_attr
        self._max_t = max_t
        self._eta = reduction_factor
        self._stop_last_trials = stop_last_trials
        self._plain = len(criteria.objectives) == 1 and not criteria.constraints
        # Highest rung first, as Ray walks them. recorded: trial_id -> {"metrics", "decision"}.
        self._rungs = [(m, {}) for m in reversed(rung_milestones(grace_period, max_t, reduction_factor))]
        self._num_stopped = 0

    @property
    def milestones(self) -> list[float]:
        return [m for m, _ in reversed(self._rungs)]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return metric is None and mode is None  # the criteria are fixed at construction

    def on_trial_result(self, tune_controller, trial: "Trial", result: dict) -> str:
        if not self._readable(result):
            return TrialScheduler.CONTINUE
        if result[self._time_attr] >= self._max_t and self._stop_last_trials:
            action = TrialScheduler.STOP
        else:
            action = self._on_result(trial.trial_id, result, final=False)
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
        return action

    def on_trial_complete(self, tune_controller, trial: "Trial", result: dict):
        if result and self._readable(result):
            self._on_result(trial.trial_id, result, final=True)

    def _readable(self, result: dict) -> bool:
        return all(key in result for key in (self._time_attr, *self.criteria.metrics))

    def _on_result(self, trial_id: str, result: dict, *, final: bool) -> str:
        """Record the result at the highest rung it reached and was not recorded at; decide there.
        (The walk is Ray's `_Bracket.on_result`, so trials that skip rungs are treated alike.)"""
        t = result[self._time_attr]
        for milestone, recorded in self._rungs:
            if t >= milestone and trial_id in recorded and not self._stop_last_trials:
                break
            if t < milestone or trial_id in recorded:
                continue
            metrics = {name: float(result[name]) for name in self.criteria.metrics}
            action = self._decide(trial_id, metrics, recorded)
            recorded[trial_id] = {"metrics": metrics, "decision": FINISHED if final else action}
            return action
        return TrialScheduler.CONTINUE

    def _decide(self, trial_id: str, metrics: dict, recorded: dict) -> str:
        if not recorded:
            return TrialScheduler.CONTINUE
        if self._plain:
            reward = -self.criteria.signed(metrics)[0]
            rewards = [-self.criteria.signed(e["metrics"])[0] for e in recorded.values()]
            rewards = [r for r in rewards if math.isfinite(r)]
            if not math.isfinite(reward):
                return TrialScheduler.STOP
            if not rewards:
                return TrialScheduler.CONTINUE
            cutoff = np.percentile(rewards, (1 - 1 / self._eta) * 100)
            return TrialScheduler.STOP if reward < cutoff else TrialScheduler.CONTINUE
        rows = {key: entry["metrics"] for key, entry in recorded.items()}
        rows[trial_id] = metrics
        ahead = next(r.position for r in self.criteria.rank(rows) if r.key == trial_id)
        return TrialScheduler.CONTINUE if ahead <= (len(recorded) - 1) // self._eta else TrialScheduler.STOP

    def rung_tables(self) -> list[dict]:
        """What the scheduler recorded, for logging: one table per rung, lowest rung first, rows
        in the current ranking (`position`, `front`, `crowding`, `violation` as in
        `sweeps.pareto.Ranked`) with the trial's metrics at the rung and the decision made when
        the result arrived (`CONTINUE`, `STOP`, or `FINISHED` if recorded when the trial ended)."""
        tables = []
        for milestone, recorded in reversed(self._rungs):
            ranking = self.criteria.rank({k: e["metrics"] for k, e in recorded.items()})
            rows = [{"trial_id": r.key, "position": r.position, "front": r.front, "crowding": r.crowding,
                     "violation": r.violation, "decision": recorded[r.key]["decision"],
                     **recorded[r.key]["metrics"]} for r in ranking]
            tables.append({"milestone": milestone, "rows": rows})
        return tables

    def debug_string(self) -> str:
        counts = ", ".join(f"{m:g}: {len(rec)}" for m, rec in reversed(self._rungs))
        objectives = ", ".join(f"{o.metric} {o.mode}" for o in self.criteria.objectives)
        return f"Using MultiObjectiveASHA ({objectives}): num_stopped={self._num_stopped}; trials per rung {counts}"

    def get_state(self) -> dict:
        """Plain-data state: the recorded rung tables and the stop count."""
        return {"milestones": self.milestones, "num_stopped": self._num_stopped,
                "recorded": [{k: dict(e) for k, e in rec.items()} for _, rec in reversed(self._rungs)]}

    def set_state(self, state: dict):
        if state["milestones"] != self.milestones:
            raise ValueError(f"scheduler state has rungs {state['milestones']}, this scheduler {self.milestones}")
        self._num_stopped = state["num_stopped"]
        recorded = list(reversed(state["recorded"]))
        self._rungs = [(m, dict(rec)) for (m, _), rec in zip(self._rungs, recorded)]

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def state_callback(self) -> "SchedulerStateCallback":
        return SchedulerStateCallback(self)


class SchedulerStateCallback(Callback):
    """Carries a scheduler's state through Tune's experiment checkpoints (Tune saves callback
    state, not scheduler state). The Tuner pickles this callback and the scheduler together, so
    after `Tuner.restore` it still points at the restored scheduler."""

    def __init__(self, scheduler: MultiObjectiveASHA):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return self.scheduler.get_state()

    def set_state(self, state: dict):
        self.scheduler.set_state(state)
