"""The sweep's console: what the researcher sees, and the files where everything else goes.

By default the console shows
    the header        what runs where: trials, concurrency, Ray, storage, MLflow (4 lines)
    trial events      one line each (started, epoch N with the metric, stopped by ASHA, finished,
                      diverged, failed, interrupted) from `sweeps.callbacks.ProgressCallback`; when a
                      trial ends, a second line with the counts, the best so far and an ETA. On a
                      terminal that line is instead a live status line, redrawn in place.
    the summary       the leaderboard and champion line (`sweeps.results.finish`), then the links
and nothing else:
    driver.log               the driver's stderr (library warnings, Ray / Optuna / MLflow INFO lines,
                             progress bars): file descriptor 2 is redirected, so C extensions and
                             the processes Ray starts are caught too; plus a copy of the console
    trials/<id>/trial.log    a trial's stdout, stderr and logging (`trial_output`); Ray does not
                             forward trial output to the driver (`log_to_driver=False`)
MLflow's "View run" / "View experiment" links and artifact progress bars are switched off through
its environment variables (`quiet_environment`). `--verbose` keeps all of it on the console.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

LOG_FILE = "driver.log"
TRIAL_LOG = "trial.log"
TOP_RUNS = 8  # runs in the compare view
INDENT = " " * 15  # under the `[sweep  123s] ` prefix
OUTCOMES = ("running", "done", "stopped", "diverged", "failed", "pending")

# MLflow prints run/experiment links when a run ends and progress bars when it moves artifacts.
QUIET_ENV = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
             "MLFLOW_PRINT_MODEL_URLS_ON_CREATION": "false"}


@dataclass(frozen=True)
class TrialState:
    """What the console and `status` know of one trial.

    Attributes:
        status: Tune's: PENDING, RUNNING, PAUSED, TERMINATED or ERROR.
        epochs: epochs reported; seconds: training time so far (Tune's `time_total_s`).
        best: the trial's best metric value so far (None before its first epoch).
    """

    trial_id: str
    name: str
    status: str
    epochs: int = 0
    seconds: float = 0.0
    diverged: bool = False
    best: float | None = None

    def outcome(self, max_epochs: int) -> str:
        """running | pending | done (all epochs) | stopped (by ASHA) | diverged | failed."""
        if self.status == "ERROR":
            return "failed"
        if self.status == "TERMINATED":
            return "diverged" if self.diverged else "done" if self.epochs >= max_epochs else "stopped"
        return "running" if self.status == "RUNNING" else "pending"


@dataclass(frozen=True)
class Progress:
    counts: Counter
    best: tuple[float, str] | None  # (value, trial name)
    eta_s: float | None


def progress(states: list[TrialState], total: int, max_epochs: int, concurrency: int, mode: str) -> Progress:
    """Counts per outcome (trials not created yet are pending), the best value, the ETA."""
    counts = Counter(s.outcome(max_epochs) for s in states)
    counts["pending"] += max(total - len(states), 0)
    scored = [(s.best, s.name) for s in states if s.best is not None and math.isfinite(s.best)]
    best = (min if mode == "min" else max)(scored, key=lambda b: b[0]) if scored else None
    return Progress(counts, best, eta_seconds(states, counts["pending"], max_epochs, concurrency))


def eta_seconds(states: list[TrialState], pending: int, max_epochs: int, concurrency: int) -> float | None:
    """Epochs still to train × mean seconds per epoch ÷ trials at once; None before any epoch.

    A trial is expected to train as many epochs as the ended trials did on average (ASHA stops
    most of them early), `max_epochs` before any ended; a running trial at least one more.
    """
    trained = [s for s in states if s.epochs]
    if not trained:
        return None
    per_epoch = sum(s.seconds for s in trained) / sum(s.epochs for s in trained)
    ended = [s.epochs for s in states if s.outcome(max_epochs) in ("done", "stopped", "diverged")]
    expected = sum(ended) / len(ended) if ended else max_epochs
    remaining = pending * expected + sum(max(expected - s.epochs, 1.0) for s in states
                                         if s.outcome(max_epochs) == "running" and s.epochs < max_epochs)
    return remaining * per_epoch / max(concurrency, 1)


def format_progress(p: Progress, metric: str, eta: bool = True) -> str:
    """`running 2 · done 1 · failed 0 · pending 3 | best val/abs_rel 0.2672 (<trial>) | ETA ~40 s`."""
    counts = " · ".join(f"{k} {p.counts[k]}" for k in OUTCOMES if p.counts[k] or k in ("running", "done", "failed"))
    best = f"best {metric} {p.best[0]:.4f} ({p.best[1]})" if p.best else f"best {metric} -"
    if not eta:
        return f"{counts} | {best}"
    return f"{counts} | {best} | " + (f"ETA ~{duration(p.eta_s)}" if p.eta_s is not None else "ETA -")


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Console:
    """Lines for the researcher on `stream` (copied to `log`) and, on a terminal, one live status
    line under them.

    `header` sets what the progress callback reads: `setup` (the sweep's `TrialSetup`) and
    `concurrency`.
    """

    def __init__(self, stream=None, log=None, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.log = log
        self.live = self.stream.isatty() if live is None else live
        self.started = time.time()
        self.setup = None
        self.concurrency = 1
        self._status = ""

    def line(self, text: str = "") -> None:
        """A permanent line (above the live status line)."""
        self._erase()
        self.stream.write(text + "\n")
        self.stream.flush()
        if self.log is not None:
            self.log.write(text + "\n")
            self.log.flush()
        self._draw()

    def event(self, name: str, text: str, progress_line: str, *, ended: bool = False, extra: str | None = None):
        """A trial event: one line; a second one for `extra` (a failure's log) or, when a trial
        ended and there is no live line, the progress; the live line shows the progress anyway."""
        self.line(f"{self.stamp()} {name:<16} {text}")
        if extra:
            self.line(INDENT + extra)
        elif ended and not self.live:
            self.line(INDENT + progress_line)
        self.status(progress_line)

    def status(self, text: str) -> None:
        """Replace the live status line (terminal only)."""
        self._erase()
        self._status = text
        self._draw()

    def stop_live(self) -> None:
        self._erase()
        self._status = ""

    def stamp(self) -> str:
        return f"[sweep {time.time() - self.started:5.0f}s]"

    def header(self, plan, setup, concurrency: int, where: str, runs_url: str) -> None:
        """What runs where (`plan`: the `SweepPlan`, `setup`: the trials' `TrialSetup`)."""
        space = plan.space
        self.setup, self.concurrency = setup, concurrency
        self.line(f"sweep {space.name}: {space.num_samples} trials of up to {space.max_epochs} epochs "
                  f"(ASHA stops the weaker ones), {concurrency} at a time on {where}")
        self.line(f"  storage  {plan.sweep_dir}  (logs: {LOG_FILE}, trials/<id>/{TRIAL_LOG})")
        self.line(f"  MLflow   {plan.tracking_uri}  experiment {plan.experiment}, parent run {setup.parent_run_id}")
        self.line(f"  runs     {runs_url}")

    def links(self, summary: dict, tracker) -> None:
        """After the leaderboard and the champion line: the report, the runs, the compare view."""
        from tracking import ui
        from tracking.params import best_metric_name

        uri, experiment_id = tracker.tracking_uri, tracker.experiment_id
        if summary.get("report"):
            report = Path(summary["report"])
            self.line(f"  report   {report}")
            self.line(f"           {ui.artifact_url(uri, experiment_id, tracker.parent_run_id, report.name)}")
        self.line(f"  runs     {ui.runs_url(uri, experiment_id)}")
        top = [row["run_id"] for row in summary.get("rows", []) if row.get("best_val_abs_rel") is not None][:TOP_RUNS]
        if top:
            space = self.setup.space
            metric = best_metric_name(space.metric)
            ui.save_top_runs_view(tracker.client, experiment_id, top, searched_params(space), metric)
            self.line(f"  compare  {ui.runs_url(uri, experiment_id, ui.TOP_RUNS_VIEW, charts=True)}")
            self.line(f"           (top {len(top)} runs: parallel coordinates of the searched parameters vs {metric})")

    def _erase(self) -> None:
        if self.live and self._status:
            self.stream.write("\r\x1b[2K")

    def _draw(self) -> None:
        if self.live and self._status:
            width = shutil.get_terminal_size((120, 20)).columns
            self.stream.write(f"{self.stamp()} {self._status}"[: width - 1])
            self.stream.flush()


def searched_params(space) -> list[str]:
    """Training-config keys the space searches, as the trial runs log them, and the model size."""
    from sweeps.space import ALPHA_KEY, ALPHA_RATIO_KEY, STRATEGY_KEY

    keys = [STRATEGY_KEY]
    for param in (*space.params, *(p for s in space.strategies for p in s.params)):
        key = ALPHA_KEY if param.key == ALPHA_RATIO_KEY else param.key
        if param.kind != "fixed" and key not in keys:
            keys.append(key)
    return [*keys, "lora.trainable_params"]


def ray_description(address: str | None) -> str:
    """`a local Ray (2 CPUs)` or `the Ray cluster at <address> (64 CPUs, 8 GPUs)`."""
    import ray

    resources = ray.cluster_resources()
    amounts = ", ".join(f"{resources[k]:g} {k}s" for k in ("CPU", "GPU") if resources.get(k))
    return f"{f'the Ray cluster at {address}' if address else 'a local Ray'} ({amounts})"


_active: Console | None = None


def active() -> Console:
    """The console of this driver (a plain one on stdout outside `session`)."""
    global _active
    if _active is None:
        _active = Console()
    return _active


@contextlib.contextmanager
def quiet_environment(quiet: bool = True):
    """Environment of a quiet sweep for the block (MLflow is used and Ray starts its workers in
    it), restored afterwards so a later driver in the same process (`--verbose`) is not muted."""
    before = {key: os.environ.get(key) for key in QUIET_ENV}
    if quiet:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def session(sweep_dir: Path, verbose: bool):
    """The console of one driver run; unless `verbose`, the driver's stderr goes to driver.log."""
    global _active
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log_path = sweep_dir / LOG_FILE
    with open(log_path, "a", encoding="utf-8") as log:
        console = _active = Console(sys.stdout, log)
        restore = None if verbose else _stderr_to(log)
        try:
            yield console
        except Exception as err:
            from lora_train.errors import UserError
            from sweeps.interrupts import SweepInterrupted

            if not isinstance(err, (UserError, SweepInterrupted)):
                console.line(f"sweep failed ({type(err).__name__}); the driver's log: {log_path}")
            raise
        finally:
            console.stop_live()
            if restore is not None:
                restore()
            _active = None


def _stderr_to(log):
    """Point file descriptor 2 at `log`; returns the function that points it back."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)

    def restore():
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)

    return restore


class _Tee:
    """A text stream writing to `primary` and `copy` (the trial log)."""

    def __init__(self, primary, copy):
        self.primary, self.copy = primary, copy

    def write(self, text):
        if not self.copy.closed:  # a stream kept by some logger after the trial ended
            self.copy.write(text)
        return self.primary.write(text)

    def flush(self):
        if not self.copy.closed:
            self.copy.flush()
        self.primary.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding, ... of the real stream
        return getattr(self.primary, name)


@contextlib.contextmanager
def trial_output(path: Path):
    """Inside a trial: its stdout, stderr, logging and, should it fail, the traceback also go to
    `path` (the trial's own output still reaches Ray's worker log, forwarded under --verbose)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", buffering=1) as log:
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            with contextlib.redirect_stdout(_Tee(sys.stdout, log)), contextlib.redirect_stderr(_Tee(sys.stderr, log)):
                yield
        except Exception:
            log.write(traceback.format_exc())
            raise
        finally:
            root.removeHandler(handler)
