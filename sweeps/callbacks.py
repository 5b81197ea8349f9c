"""Driver-side Tune callbacks: MLflow child runs with terminal status, and compact live progress."""

from __future__ import annotations

import math
import sys
import time

from ray.tune import Callback

from sweeps.trial import TrialSetup, mark_stopped, overrides_for, record_run_id, trial_run_name


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
    """One line per event: trials running / done / stopped / failed and the best so far."""

    def __init__(self, metric: str, mode: str, max_epochs: int, stream=None):
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.stream = stream or sys.stdout
        self.best: tuple[float, str] | None = None
        self.start = time.time()
        self.ended: dict[str, str] = {}

    def _is_better(self, value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best is None:
            return True
        return value < self.best[0] if self.mode == "min" else value > self.best[0]

    def _print(self, trials, event: str):
        running = sum(t.status == "RUNNING" for t in trials)
        counts = {s: sum(v == s for v in self.ended.values()) for s in ("done", "stopped", "failed")}
        best = f"{self.best[0]:.4f} ({self.best[1]})" if self.best else "-"
        elapsed = time.time() - self.start
        print(
            f"[sweep {elapsed:6.0f}s] {event:<46} | running {running} done {counts['done']} "
            f"stopped {counts['stopped']} failed {counts['failed']} | best {self.metric} {best}",
            file=self.stream, flush=True,
        )

    def on_trial_start(self, iteration, trials, trial, **info):
        self._print(trials, f"{trial.trial_id} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if self._is_better(value):
            self.best = (value, trial.trial_id)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
        self._print(trials, f"{trial.trial_id} epoch {result.get('training_iteration')}: {shown}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = _last_iteration(trial)
        self.ended[trial.trial_id] = "done" if epochs >= self.max_epochs else "stopped"
        self._print(trials, f"{trial.trial_id} {'finished' if epochs >= self.max_epochs else 'stopped by ASHA'} "
                            f"after {epochs} epoch(s)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = "failed"
        self._print(trials, f"{trial.trial_id} failed")
