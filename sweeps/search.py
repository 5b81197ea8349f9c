"""Ray's OptunaSearch, told the truth about early-stopped trials.

When ASHA stops a trial, Tune calls `on_trial_complete` with the trial's last result and stock
`OptunaSearch` tells Optuna the trial COMPLETED with that truncated value. TPE would then rank a
one-epoch score as if it were final. Here a trial that ended before `max_epochs` without error is
told PRUNED (Optuna keeps its last intermediate value, reported per epoch), a diverged one FAIL.
"""

from __future__ import annotations

import logging

from ray.tune.search.optuna import OptunaSearch

_log = logging.getLogger(__name__)


class PruningAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs

    def on_trial_result(self, trial_id, result):
        # After a killed driver, Ray's experiment state can be a second older than the Optuna
        # study: a trial it resumes may already be finished in the study. Its intermediate value
        # is then already recorded; never fail the sweep over it.
        try:
            super().on_trial_result(trial_id, result)
        except (RuntimeError, ValueError, KeyError) as exc:
            _log.warning("optuna report for trial %s skipped: %s", trial_id, exc)

    def on_trial_complete(self, trial_id, result=None, error=False):
        from optuna.trial import TrialState

        result = result or {}
        stopped_early = not error and 0 < result.get("training_iteration", 0) < self.max_epochs
        diverged = result.get("train_status") == "diverged"
        if trial_id in self._completed_trials or not (stopped_early or diverged):
            return super().on_trial_complete(trial_id, result or None, error)
        state = TrialState.FAIL if diverged else TrialState.PRUNED
        try:
            self._ot_study.tell(self._ot_trials[trial_id], None, state=state)
        except Exception as exc:  # e.g. already told after a restore
            _log.warning("optuna tell(%s) for trial %s: %s", state.name, trial_id, exc)
        self._completed_trials.add(trial_id)
