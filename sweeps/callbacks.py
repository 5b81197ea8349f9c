"""Driver-side Tune callbacks: MLflow child runs with terminal status, and the trial events of the
sweep's console."""

from __future__ import annotations

import math
import time

from ray.tune import Callback

from sweeps.trial_setup import (
    TrialSetup,
    mark_stopped,
    overrides_for,
    record_run_id,
    trial_dir,
    trial_run_name,
)


def _last_iteration(trial) -> int:
    return int((trial.last_result or {}).get("training_iteration", 0) or 0)


class MlflowTrialCallback(Callback):
    """Owns the trials' MLflow child runs from the sweep driver.

    Opens a trial's run when it starts (idempotent, so a retried or restored trial keeps its run)
    and closes it with `trial.status` = completed | early_stopped | failed | diverged when it ends:
    ASHA kills stopped trials, so code inside them cannot be trusted to close their runs. The
    trial→run map is part of the Tune experiment state (`get_state`/`set_state`), so a restored
    sweep neither duplicates nor forgets runs.
    """

    def __init__(self, setup: TrialSetup, tracker):
        self.trial_setup = setup
        self.tracker = tracker
        self.runs: dict[str, str] = {}
        self.closed: dict[str, str] = {}

    def __getstate__(self):  # the callback is pickled with the experiment; the client is not
        state = dict(self.__dict__)
        state["tracker"] = None
        state["_tracker_args"] = (self.tracker.tracking_uri, self.tracker.experiment, self.tracker.parent_run_id)
        return state

    def __setstate__(self, state):
        uri, experiment, parent = state.pop("_tracker_args")
        self.__dict__.update(state)
        from tracking.runs import SweepTracker

        self.tracker = SweepTracker(uri, experiment, parent_run_id=parent)

    def get_state(self):
        return {"runs": dict(self.runs), "closed": dict(self.closed)}

    def set_state(self, state):
        self.runs.update(state.get("runs", {}))
        self.closed.update(state.get("closed", {}))

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id not in self.runs:
            overrides = overrides_for(trial.config, self.trial_setup, trial.trial_id)
            self.runs[trial.trial_id] = self.tracker.open_trial(
                trial.trial_id, params=overrides, run_name=trial_run_name(trial.trial_id, overrides)
            )
        record_run_id(self.trial_setup, trial.trial_id, self.runs[trial.trial_id])

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = _last_iteration(trial)
        train_status = (trial.last_result or {}).get("train_status")
        if train_status == "diverged":
            status, reason = "diverged", (trial.last_result or {}).get("stop_reason", "non-finite loss")
        elif epochs >= self.trial_setup.space.max_epochs:
            status, reason = "completed", f"{epochs} epochs"
        else:
            status, reason = "early_stopped", f"ASHA stopped it after {epochs} epoch(s)"
        mark_stopped(self.trial_setup, trial.trial_id)
        self._close(trial, status, reason)

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = "error"
        if trial.error_file:
            try:
                with open(trial.error_file) as f:
                    lines = [line.strip() for line in f if line.strip()]
                reason = lines[-1] if lines else reason
            except OSError:
                pass
        self._close(trial, "failed", reason[:500])

    def _close(self, trial, status, reason):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or self.closed.get(trial.trial_id) == status:
            return
        self.tracker.close_trial(run_id, status, reason)
        self.closed[trial.trial_id] = status


class ProgressCallback(Callback):
    """Trial events → the sweep's console (`sweeps.console`): one line per event, then the counts,
    the best so far and an ETA. It keeps no counts of its own (it reads Tune's trials), so a
    restored sweep goes on counting where it stopped."""

    def __init__(self, metric: str, mode: str, max_epochs: int, total: int | None = None):
        """`total`: trials of this Tune run (default: the sweep's `num_samples`)."""
        self.metric, self.mode, self.max_epochs, self.total = metric, mode, max_epochs, total
        self.refreshed = 0.0

    def on_trial_start(self, iteration, trials, trial, **info):
        self._event(trials, trial, "started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        text = f"epoch {result.get('training_iteration')}: {self.metric} " + (f"{value:.4f}" if _finite(value) else "n/a")
        summary = self._progress(trials, trial, result)
        if summary.best and summary.best == (value, self._name(trial)):
            text += "  (best so far)"
        self._event(trials, trial, text, summary=summary)

    def on_trial_complete(self, iteration, trials, trial, **info):
        state = self._state(trial)
        best = f"best {self.metric} {state.best:.4f}" if state.best is not None else "no result"
        if state.diverged:
            reason = (trial.last_result or {}).get("stop_reason") or "non-finite loss"
            text = f"diverged after {state.epochs} epoch(s): {reason}"
        elif state.epochs >= self.max_epochs:
            text = f"finished: {state.epochs} epochs, {best}"
        else:
            text = f"stopped by ASHA after {state.epochs} epoch(s), {best}"
        self._event(trials, trial, text, status="TERMINATED", ended=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        from sweeps.console import TRIAL_LOG, active

        setup = active().setup
        log = trial_dir(setup, trial.trial_id) / TRIAL_LOG if setup else None
        extra = f"log: {log}" + (f"  (traceback: {trial.error_file})" if trial.error_file else "")
        self._event(trials, trial, f"failed: {_last_error_line(trial)}", status="ERROR", ended=True, extra=extra)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._event(trials, trial, f"failed, retrying: {_last_error_line(trial)}")

    def on_step_end(self, iteration, trials, **info):
        from sweeps.console import active, format_progress

        if active().live and time.monotonic() - self.refreshed >= 1.0:  # the live line's clock and ETA
            self.refreshed = time.monotonic()
            active().status(format_progress(self._progress(trials), self.metric))

    def on_experiment_end(self, trials, **info):
        from sweeps import interrupts
        from sweeps.console import active

        if interrupts.interrupted():
            for trial in trials:
                if trial.status in ("RUNNING", "PAUSED"):
                    self._event(trials, trial, f"interrupted after {self._state(trial).epochs} epoch(s); "
                                               "--resume continues it")
        active().stop_live()  # what follows (leaderboard, a confirm phase) prints plain lines

    def _event(self, trials, trial, text: str, result=None, status=None, summary=None, **kwargs) -> None:
        from sweeps.console import active, format_progress

        summary = summary or self._progress(trials, trial, result, status)
        active().event(self._name(trial), text, format_progress(summary, self.metric), **kwargs)

    def _progress(self, trials, trial=None, result=None, status=None):
        """Progress over `trials`, `trial` with the `result` or `status` Tune is reporting (Tune
        updates the trial after its callbacks)."""
        from sweeps.console import active, progress

        console = active()
        states = [self._state(t, result, status) if t is trial else self._state(t) for t in trials]
        total = self.total or (console.setup.space.num_samples if console.setup else len(trials))
        return progress(states, total, self.max_epochs, console.concurrency, self.mode)

    def _state(self, trial, result: dict | None = None, status: str | None = None):
        """`trial` as a `TrialState`, with the epoch `result` or end `status` Tune is reporting."""
        from sweeps.console import TrialState

        last = result or (trial.last_result if trial.has_reported_at_least_once else {})
        best = (trial.metric_analysis.get(self.metric) or {}).get(self.mode)
        value = (result or {}).get(self.metric)
        if _finite(value) and (not _finite(best) or (value < best if self.mode == "min" else value > best)):
            best = value
        return TrialState(trial.trial_id, self._name(trial), status or trial.status, int(last.get("training_iteration") or 0),
                          float(last.get("time_total_s") or 0.0), last.get("train_status") == "diverged",
                          best if _finite(best) else None)

    def _name(self, trial) -> str:
        """The trial's MLflow run name (`<trial id>-<strategy>-r<rank>`)."""
        from sweeps.console import active
        from sweeps.space import trial_overrides

        setup = active().setup
        return trial_run_name(trial.trial_id, trial_overrides(trial.config, setup.space)) if setup else trial.trial_id


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _last_error_line(trial) -> str:
    """The last line of a failed trial's error (Tune's error file), e.g. `RuntimeError: ...`."""
    try:
        with open(trial.error_file) as f:
            lines = [line.strip() for line in f if line.strip()]
    except (OSError, TypeError):
        return "error (no error file)"
    return (lines[-1] if lines else "error")[:300]
