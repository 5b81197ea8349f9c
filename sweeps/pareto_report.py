"""The multi-objective end of a sweep (called by `sweeps.results.finish`): Pareto tags, hypervolume,
`pareto.png`, parameter importance.

The trials are the sweep's search trial runs (not the confirm phase's repeats) scored on the
parent's validation windows that produced a result (completed, or stopped early by ASHA; failed
and diverged runs are left out), each with
its last reported value of every metric (MLflow's latest value, at step = its last epoch): what
the adapter of its last checkpoint scores. A trial ASHA stopped is a model too, so it can be on
the front.

1. `sweep.pareto` = true on the non-dominated feasible trials (constrained domination,
   `sweeps.pareto.pareto_front`), false on the others. A constraint on a final-evaluation metric
   (`eval/*`, `retention/*`) counts as violated by a trial ASHA stopped: it was never evaluated.
2. With two objectives, the parent logs `sweep/hypervolume` at step k = the hypervolume of the
   first k finished trials (by end time), all measured in one box: `sweeps.pareto.hypervolume_box`
   over the feasible trials of the whole sweep, i.e. per objective from its best value (the
   ideal, 0) to its worst value moved out by 10 % of the span (the reference point, 1), on the
   objective's scale (log for sizes and costs). 1.0 would be a trial at the ideal in both. The box
   depends on the sweep's own trials: values compare within a sweep, not across sweeps (the box is
   the parent tag `sweep.hypervolume_box`). `pareto.png` shows the trials, the front and the box.
3. Per objective, the importance of each parameter (Optuna's PED-ANOVA) over the study's COMPLETE
   trials (warm-start trials included; PRUNED and FAIL trials carry no final values), printed,
   plotted (`importance.png`) and written to `importance.json`, both logged to the parent.
   Conditional parameters (`by_strategy/<label>/...`) are measured over the trials of their
   branch: their importance includes the effect of choosing that branch.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

from sweeps import console
from sweeps.pareto import Criteria, hypervolume_2d, hypervolume_box, pareto_front
from sweeps.space import SweepSpace
from sweeps.trial_reporter import TRAINABLE_PARAMS_METRIC
from tracking.layout import PHASE_TAG, STATUS_TAG, TRIAL_ID_TAG, WINDOWS_HASH_TAG
from vggt_common.files import atomic_write

PARETO_TAG = "sweep.pareto"
HYPERVOLUME_METRIC = "sweep/hypervolume"
BOX_TAG = "sweep.hypervolume_box"
SCORED_STATUSES = ("completed", "early_stopped")
MIN_IMPORTANCE_TRIALS = 4  # PED-ANOVA compares the top trials with all: below this it says nothing


def report(space: SweepSpace, tracker, sweep_dir: Path) -> dict:
    """Tag the front, log the hypervolume curve and the plots to the parent; returns the summary
    entries (`pareto_front`, `hypervolume`, `hypervolume_box`, `importance`)."""
    criteria = space.criteria
    trials = scored_trials(tracker, criteria)
    rows = {t["run_id"]: t["metrics"] for t in trials}
    front = pareto_front(criteria, rows)
    for run_id in rows:
        tracker.client.set_tag(run_id, PARETO_TAG, "true" if run_id in front else "false")
    names = {t["run_id"]: t["trial_id"] for t in trials}
    summary = {"pareto_front": [names[r] for r in front]}
    objectives = ", ".join(f"{o.metric} {o.mode}" for o in criteria.objectives)
    console.active().line(f"pareto front ({objectives}): {len(front)} of {len(rows)} trial(s): " + "; ".join(
        f"{names[r]} (" + ", ".join(f"{rows[r][o.metric]:.4g}" for o in criteria.objectives) + ")" for r in front))
    artifacts = []
    feasible = [t["metrics"] for t in trials if criteria.violation(t["metrics"]) == 0]
    if len(criteria.objectives) == 2 and feasible:
        summary.update(_hypervolume(criteria, trials, feasible, tracker))
        artifacts.append(plot_pareto(criteria, rows, front, summary, sweep_dir / "pareto.png"))
    summary["importance"] = importances(space, sweep_dir)
    for metric, values in summary["importance"].items():
        console.active().line(f"importance for {metric}: " + ", ".join(f"{p} {v:.2f}" for p, v in values.items()))
    if summary["importance"]:
        artifacts.append(atomic_write(sweep_dir / "importance.json", json.dumps(summary["importance"], indent=2)))
        artifacts.append(plot_importance(summary["importance"], sweep_dir / "importance.png"))
    for path in artifacts:
        tracker.client.log_artifact(tracker.parent_run_id, str(path))
    return summary


def scored_trials(tracker, criteria: Criteria) -> list[dict]:
    """`[{run_id, trial_id, end_time, metrics}]` of the trials with a result, by end time (module doc)."""
    from tracking.params import finite_or_none

    expected = tracker.get_run(tracker.parent_run_id).data.tags.get(WINDOWS_HASH_TAG)
    trials = []
    for run in tracker.trial_runs():
        tags = run.data.tags
        if (tags.get(PHASE_TAG, "search") != "search" or tags.get(STATUS_TAG) not in SCORED_STATUSES
                or (expected is not None and tags.get(WINDOWS_HASH_TAG) != expected)):
            continue
        metrics = {m: run.data.metrics.get(m) for m in criteria.metrics}
        if metrics.get(TRAINABLE_PARAMS_METRIC) is None and "lora.trainable_params" in run.data.params:
            metrics[TRAINABLE_PARAMS_METRIC] = float(run.data.params["lora.trainable_params"])
        metrics = {m: v for m, v in metrics.items() if finite_or_none(v) is not None}
        trials.append({"run_id": run.info.run_id, "trial_id": tags.get(TRIAL_ID_TAG, ""),
                       "end_time": run.info.end_time or 0, "metrics": metrics})
    trials.sort(key=lambda t: (t["end_time"], t["trial_id"]))
    return trials


def _hypervolume(criteria: Criteria, trials: list[dict], feasible: list[dict], tracker) -> dict:
    """Log the hypervolume after each finished trial (step = trials finished); return the last."""
    from mlflow.entities import Metric

    objectives = criteria.objectives
    points = [[m[o.metric] for o in objectives] for m in feasible]
    reference, ideal = hypervolume_box(objectives, points)
    curve, now = [], int(time.time() * 1000)
    for k in range(1, len(trials) + 1):
        seen = [[t["metrics"][o.metric] for o in objectives] for t in trials[:k] if criteria.violation(t["metrics"]) == 0]
        curve.append(Metric(HYPERVOLUME_METRIC, hypervolume_2d(seen, objectives, reference=reference, ideal=ideal), now, k))
    tracker.client.log_batch(tracker.parent_run_id, metrics=curve)
    box = "; ".join(f"{o.metric} ({o.mode}, {o.scale}) ideal {i:.6g} reference {r:.6g}"
                    for o, i, r in zip(objectives, ideal, reference))
    tracker.client.set_tag(tracker.parent_run_id, BOX_TAG, box)
    console.active().line(f"hypervolume {curve[-1].value:.4f} after {len(trials)} trial(s), in the box {box}")
    return {"hypervolume": curve[-1].value, "hypervolume_box": {"reference": reference, "ideal": ideal}}


def importances(space: SweepSpace, sweep_dir: Path) -> dict[str, dict[str, float]]:
    """`{objective metric: {Optuna parameter: importance}}` (normalised to sum 1, largest first)
    by PED-ANOVA over the study's COMPLETE trials; empty with fewer than `MIN_IMPORTANCE_TRIALS`.

    PED-ANOVA ranks by a target where lower is better, so max objectives are negated; its top
    quantile is max(0.1, 5/n) (at most 0.5), so that at least 5 trials make the top on small studies.
    """
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    from sweeps.study_storage import study_url

    study = optuna.load_study(study_name=space.name, storage=study_url(space, sweep_dir))
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n < MIN_IMPORTANCE_TRIALS:
        return {}
    evaluator = PedAnovaImportanceEvaluator(target_quantile=min(0.5, max(0.1, 5 / n)))
    out = {}
    for i, objective in enumerate(space.criteria.objectives):
        sign = 1.0 if objective.mode == "min" else -1.0
        with warnings.catch_warnings():  # "PED-ANOVA assumes lower target values are better": they are
            warnings.simplefilter("ignore")
            values = get_param_importances(study, evaluator=evaluator, target=lambda t, i=i, s=sign: s * t.values[i])
        out[objective.metric] = {name: float(v) for name, v in values.items() if math.isfinite(v)}
    return out


def plot_pareto(criteria: Criteria, rows: dict, front: list[str], summary: dict, path: Path) -> Path:
    """The trials in the plane of the two objectives (y: the first, x: the second), the front as a
    staircase, infeasible trials crossed out, the hypervolume box dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, second = criteria.objectives
    fig, ax = plt.subplots(figsize=(7, 5))
    feasible = [r for r in rows if criteria.violation(rows[r]) == 0]
    infeasible = [r for r in rows if r not in feasible and all(o.metric in rows[r] for o in criteria.objectives)]
    for keys, style in ((feasible, {"color": "0.6", "marker": "o", "label": "trial"}),
                        (infeasible, {"color": "tab:red", "marker": "x", "label": "infeasible trial"})):
        if keys:
            ax.scatter([rows[r][second.metric] for r in keys], [rows[r][first.metric] for r in keys], **style)
    points = sorted((rows[r][second.metric], rows[r][first.metric]) for r in front)
    if points:
        ax.step(*zip(*points), where="post" if first.mode == "min" else "pre", color="tab:blue")
        ax.scatter(*zip(*points), color="tab:blue", marker="o", zorder=3, label=f"Pareto front ({len(front)})")
    box = summary.get("hypervolume_box")
    if box:
        (ref_y, ref_x), (ideal_y, ideal_x) = box["reference"], box["ideal"]
        ax.plot([ideal_x, ref_x, ref_x, ideal_x, ideal_x], [ideal_y, ideal_y, ref_y, ref_y, ideal_y],
                ls="--", color="0.3", lw=0.8, label="hypervolume box (reference point at the far corner)")
    for axis, objective in (("x", second), ("y", first)):
        if objective.scale == "log":
            getattr(ax, f"set_{axis}scale")("log")
    ax.set(xlabel=f"{second.metric} ({second.mode})", ylabel=f"{first.metric} ({first.mode})",
           title=f"{len(front)} of {len(rows)} trials on the front"
                 + (f"; hypervolume {summary['hypervolume']:.3f}" if "hypervolume" in summary else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_importance(values: dict[str, dict[str, float]], path: Path) -> Path:
    """One bar chart of parameter importance per objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(values), figsize=(5.5 * len(values), 0.45 * max(map(len, values.values())) + 2),
                             squeeze=False)
    for ax, (metric, importance) in zip(axes[0], values.items()):
        names = list(importance)[::-1]
        ax.barh(names, [importance[n] for n in names], color="tab:blue")
        ax.set(title=f"importance for {metric}", xlabel="PED-ANOVA importance (sums to 1)")
        ax.grid(axis="x", alpha=0.3)
    fig.text(0.01, 0.01, "Conditional parameters (by_strategy/<label>/...) are measured over the trials of their "
             "branch: their importance includes their branch's effect.", fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
