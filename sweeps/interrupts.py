"""Ctrl-C and SIGTERM during a sweep: stop cleanly, leave everything resumable.

    first SIGINT / SIGTERM   no new trial is proposed; running trials may finish the epoch under
                             way, whose checkpoint Tune records (at most `grace_s`); then the Tune
                             loop ends and saves the experiment state
    second signal            the Tune loop ends at once (the state saved is the same kind)

Afterwards nothing is decided from a partial sweep: no leaderboard, no champion. The driver marks
the parent and every unfinished trial run KILLED with `trial.status=interrupted`, leaves the Optuna
trials RUNNING (a resumed trial tells Optuna its result when it ends) and prints the exact
`--resume` command. `kill -9` skips all this; `--resume` repairs that case as well.

Tune's own SIGINT handler is disabled (it would print Ray's `Tuner.restore` advice instead of ours);
its loop is ended through the SIGUSR1 handler Tune always installs while it runs. The state lives
in this module because Tune unpickles its callbacks on a resumed sweep: whichever instance of
`InterruptCallback` Tune calls, it sees the signals this process received.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from ray.tune import Callback


class SweepInterrupted(Exception):
    """Raised by the driver after an interrupted Tune loop; the message is the resume line."""


class _State:
    def __init__(self):
        self.event = threading.Event()  # set once the sweep is interrupted
        self.signals = 0
        self.deadline = 0.0
        self.waiting: set[str] = set()
        self.running: set[str] = set()
        self.previous: dict = {}
        self.grace_s = 60.0
        self.notify = print


_state = _State()


def interrupted() -> bool:
    """Has this driver been interrupted? (The searcher and the MLflow callback ask.)"""
    return _state.event.is_set()


def install(grace_s: float = 60.0, notify=print) -> None:
    """Take SIGINT and SIGTERM for the sweep (main thread; call before `Tuner.fit`)."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    global _state
    _state = _State()
    _state.grace_s, _state.notify = grace_s, notify
    for sig in (signal.SIGINT, signal.SIGTERM):
        _state.previous[sig] = signal.signal(sig, _on_signal)
    logging.getLogger("ray.tune.tune").addFilter(_no_ray_resume_advice)


def _no_ray_resume_advice(record: logging.LogRecord) -> bool:
    """Ray's own notices ("Stop signal received", "resume with Tuner.restore(...)") are not how a
    sweep stops or resumes; ours say how."""
    message = record.getMessage()
    return "Tuner.restore" not in message and "Stop signal received" not in message


def uninstall() -> None:
    for sig, handler in _state.previous.items():
        signal.signal(sig, handler)
    _state.previous.clear()
    logging.getLogger("ray.tune.tune").removeFilter(_no_ray_resume_advice)


def _on_signal(signum, frame) -> None:
    _state.signals += 1
    if _state.signals == 1:
        _state.event.set()
        _state.deadline = time.monotonic() + _state.grace_s
        _state.waiting = set(_state.running)
        _state.notify(f"interrupted ({signal.Signals(signum).name}): no new trials; waiting up to "
                      f"{_state.grace_s:.0f} s for {len(_state.waiting)} running trial(s) to checkpoint "
                      "(Ctrl-C again stops now)")
    else:
        _end_tune_loop()


def _end_tune_loop() -> None:
    handler = signal.getsignal(signal.SIGUSR1)  # Tune's while it runs: ends its loop after this step
    if callable(handler):
        handler(signal.SIGUSR1, None)


class InterruptCallback(Callback):
    """Driver-side Tune callback: after the first signal, ends the Tune loop once every trial that
    was running has reported a checkpoint (or ended), or the grace period is over."""

    def on_step_end(self, iteration, trials, **info):
        _state.running = {t.trial_id for t in trials if t.status == "RUNNING"}
        if _state.event.is_set() and (not _state.waiting or time.monotonic() >= _state.deadline):
            _end_tune_loop()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        _state.waiting.discard(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        _state.waiting.discard(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        _state.waiting.discard(trial.trial_id)
