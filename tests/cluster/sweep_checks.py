"""What a sweep that ran on the cluster must show afterwards: one MLflow run per trial, and every
epoch and step metric that a trial reported in MLflow exactly once.

The expected side comes from Ray Tune's own record of the trials (`<sweep>/<trial>/result.json` in
the shared storage: one row per reported epoch, with the node it ran on); the found side from
MLflow. Epochs are matched by their `val/abs_rel` value (the stand-in trainer's values differ from
epoch to epoch) and steps by step number, so neither depends on the step axis chosen for epochs.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.sweep_harness import tune_results

STEPS_PER_EPOCH = 2  # the stand-in trainer's optimizer steps per epoch


@dataclass
class Tally:
    trials: int  # trials the sweep ran (Tune)
    runs_once: int  # trials with exactly one MLflow run
    duplicated: int  # extra runs beyond one per trial
    metrics_logged: int = 0  # epoch + step metrics the trials reported
    metrics_found: int = 0  # of those, present exactly once in MLflow
    problems: list[str] = field(default_factory=list)
    epochs: dict[str, list[dict]] = field(default_factory=dict)  # trial → Tune rows, one per epoch

    @property
    def lost(self) -> int:
        return self.trials - self.runs_once

    def detail(self) -> str:
        return f"lost {self.lost}, duplicated {self.duplicated}"


def epoch_rows(sweep_dir: Path) -> dict[str, list[dict]]:
    """trial id → its Tune result rows, one per epoch (the last row of a repeated epoch)."""
    out = {}
    for trial_id, rows in tune_results(sweep_dir).items():
        by_epoch = {row["training_iteration"]: row for row in rows}
        out[trial_id] = [by_epoch[k] for k in sorted(by_epoch)]
    return out


def tally(tracker, sweep_dir: Path, metric: str = "val/abs_rel") -> Tally:
    runs = tracker.trial_runs()
    rows = epoch_rows(sweep_dir)
    per_trial = Counter(r.data.tags.get("ray.trial_id") for r in runs)
    result = Tally(trials=len(rows), runs_once=sum(1 for t in rows if per_trial[t] == 1),
                   duplicated=sum(n - 1 for n in per_trial.values() if n > 1), epochs=rows)
    for run in runs:
        trial_id = run.data.tags.get("ray.trial_id")
        epochs = rows.get(trial_id, [])
        history = tracker.client.get_metric_history(run.info.run_id, metric)
        expected = [row[metric] for row in epochs]
        once = [v for v in expected if sum(math.isclose(m.value, v, rel_tol=1e-9) for m in history) == 1]
        result.metrics_logged += len(expected)
        result.metrics_found += len(once)
        if len(once) != len(expected) or len(history) != len(expected):
            result.problems.append(f"{trial_id}: {metric} {len(history)} entries for {len(expected)} epochs")
        steps = sorted(m.step for m in tracker.client.get_metric_history(run.info.run_id, "train/loss"))
        wanted = list(range(STEPS_PER_EPOCH * len(epochs)))
        result.metrics_logged += len(wanted)
        result.metrics_found += sum(1 for s in wanted if steps.count(s) == 1)
        if steps != wanted:
            result.problems.append(f"{trial_id}: train/loss at {len(steps)} steps, {len(wanted)} expected")
    return result
