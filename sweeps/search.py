"""Ray's OptunaSearch, told the truth about early-stopped trials, for one objective or several.

When ASHA stops a trial, Tune calls `on_trial_complete` with the trial's last result and stock
`OptunaSearch` tells Optuna the trial COMPLETED with that truncated value: TPE would then rank a
one-epoch score as if it were final. Here a trial's end is told as

- PRUNED when it ended before `max_epochs` without error (ASHA stopped it). With one objective,
  Optuna keeps the intermediate values reported per epoch. A multi-objective study takes no
  intermediate values (`Trial.report` raises there), so each epoch's objective vector is recorded
  as the user attribute `values@<epoch>` and the trial is told PRUNED without values: never
  COMPLETE with a truncated vector;
- FAIL when it raised, diverged or ended without a finite value of every objective;
- COMPLETE with its final objective value(s) otherwise.

Every trial told COMPLETE or PRUNED also gets its constraint values (`Trial.set_constraint`,
`sweeps.pareto.Criteria.excesses`), which Optuna's samplers use to prefer feasible regions; a
PRUNED trial only those its last result carries (final-evaluation metrics come at the end only).

With a warm start (`sweeps/warm_start.py`), a proposal equal to a finished earlier configuration
is marked for reuse (user attribute `reused_run_id`, the earlier run's epochs left in the trial's
folder): the trial replays them instead of training.
"""

from __future__ import annotations

import logging
import math

from ray.tune.search.optuna import OptunaSearch

from sweeps.pareto import Criteria

_log = logging.getLogger(__name__)


class PruningAwareOptunaSearch(OptunaSearch):
    """`OptunaSearch` (define-by-run space, `metric`/`mode` lists for several objectives) that
    tells stopped trials apart (module doc).

    Args:
        max_epochs: a trial's full length (ASHA's max_t).
        criteria: the sweep's objectives (in the order of `metric`) and constraints.
        warm_start: earlier trials whose configurations are reused, not retrained
            (`sweeps.warm_start.WarmStart`, or None).
    """

    def __init__(self, *args, max_epochs: int, criteria: Criteria, warm_start=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs
        self.criteria = criteria
        self.warm_start = warm_start

    @property
    def multi_objective(self) -> bool:
        return len(self.criteria.objectives) > 1

    def suggest(self, trial_id):
        from sweeps.interrupts import interrupted

        if interrupted():  # the sweep is stopping: propose nothing (a resumed sweep will)
            return None
        config = super().suggest(trial_id)
        if config is not None and self.warm_start is not None:
            self._reuse_if_done_before(trial_id)
        return config

    def _reuse_if_done_before(self, trial_id: str) -> None:
        from sweeps import console
        from sweeps.warm_start import REUSED_ATTR

        ot_trial = self._ot_trials[trial_id]
        earlier = self.warm_start.duplicate_of(ot_trial.params)
        if earlier is None:
            return
        try:
            self.warm_start.reuse(trial_id, earlier, self.max_epochs)
        except Exception as exc:  # the earlier run's files are gone: train it after all
            console.active().line(f"trial {trial_id} repeats the finished run {earlier.run_id}, whose result "
                                  f"cannot be reused ({exc!r}); training it")
            return
        ot_trial.set_user_attr(REUSED_ATTR, earlier.run_id)
        console.active().line(f"trial {trial_id} repeats the finished run {earlier.run_id} of {earlier.experiment}: "
                              "its result is reused, not trained again")

    def on_trial_result(self, trial_id, result):
        # After a killed driver, Ray's experiment state can be a second older than the Optuna
        # study: a trial it resumes may already be finished in the study. Its intermediate value
        # is then already recorded; never fail the sweep over it.
        try:
            if self.multi_objective:
                if trial_id not in self._completed_trials:
                    values = [_number(result.get(o.metric)) for o in self.criteria.objectives]
                    self._ot_trials[trial_id].set_user_attr(f"values@{result['training_iteration']}", values)
            else:
                super().on_trial_result(trial_id, result)
        except (RuntimeError, ValueError, KeyError) as exc:
            _log.warning("optuna report for trial %s skipped: %s", trial_id, exc)

    def on_trial_complete(self, trial_id, result=None, error=False):
        from optuna.trial import TrialState

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            _log.warning("optuna: trial %s already told or unknown; ignored", trial_id)
            return
        result = result or {}
        values = [_number(result.get(o.metric)) for o in self.criteria.objectives]
        if error or result.get("train_status") == "diverged":
            state = TrialState.FAIL
        elif result.get("training_iteration", 0) < self.max_epochs:
            state = TrialState.PRUNED
        else:
            state = TrialState.COMPLETE if all(math.isfinite(v) for v in values) else TrialState.FAIL
        ot_trial = self._ot_trials[trial_id]
        try:
            if self.multi_objective and state == TrialState.PRUNED and result:  # the result ASHA stopped it at
                ot_trial.set_user_attr(f"values@{result['training_iteration']}", values)
            if state != TrialState.FAIL and result:
                for label, excess in self.criteria.excesses(result).items():
                    if state == TrialState.COMPLETE or not math.isinf(excess):  # final-only metrics: unknown
                        ot_trial.set_constraint(label, excess)
            self._ot_study.tell(ot_trial, values if state == TrialState.COMPLETE else None, state=state)
        except Exception as exc:  # e.g. already told after a restore
            _log.warning("optuna tell(%s) for trial %s: %s", state.name, trial_id, exc)
        self._completed_trials.add(trial_id)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
