"""The reporter interface: the one seam between the training loop and whoever listens.

The sweep plugs in a reporter that forwards to Ray Tune and MLflow; the plain CLI uses
`ConsoleReporter`, which prints and appends JSON lines to a log file.
"""

import json
import time
from pathlib import Path


class Reporter:
    """Receives what a training run produces. Default: ignore everything."""

    def on_step(self, step: int, metrics: dict) -> None:
        pass

    def on_epoch(self, epoch: int, metrics: dict, checkpoint_dir: str | None) -> None:
        pass

    def on_end(self, status: str, reason: str = "") -> None:
        pass


class ConsoleReporter(Reporter):
    """Prints epoch summaries and writes every event as one JSON line to `log_path`."""

    def __init__(self, log_path: str | Path | None = None, print_steps: bool = False):
        self.log_path = Path(log_path) if log_path else None
        self.print_steps = print_steps
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, record: dict) -> None:
        if self.log_path:
            with self.log_path.open("a") as f:
                f.write(json.dumps({"time": time.time(), **record}) + "\n")

    def on_step(self, step, metrics):
        self._write({"event": "step", "step": step, **metrics})
        if self.print_steps:
            print(f"step {step}: " + _fmt(metrics), flush=True)

    def on_epoch(self, epoch, metrics, checkpoint_dir):
        self._write({"event": "epoch", "epoch": epoch, "checkpoint_dir": checkpoint_dir, **metrics})
        print(f"epoch {epoch}: " + _fmt(metrics), flush=True)

    def on_end(self, status, reason=""):
        self._write({"event": "end", "status": status, "reason": reason})
        if status != "failed":  # a failure is printed once, by whoever handles the exception
            print(f"run {status}" + (f": {reason}" if reason else ""), flush=True)


def _fmt(metrics: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
