"""Compare the trials of a sweep: leaderboard (CSV + Markdown), learning curves, Pareto plots.

CLI:
    python -m tracking.compare --experiment NAME [--tracking-uri URI] [--out DIR]
                               [--parent-run-id ID] [--no-log]

Prints the leaderboard, writes `leaderboard.csv`, `leaderboard.md`, `val_abs_rel_curves.png`,
`pareto_trainable_params.png`, `pareto_cost.png` to `--out`, and logs them to the parent run
under `comparison/`. The sweep calls `build_leaderboard` / `write_leaderboard` / `write_plots`.

A row is a search trial; its score is a single seed's ("best val AbsRel (search, single seed)"). A
configuration the sweep confirmed (sweeps/confirm.py: trained again with new seeds) also shows
the mean AbsRel over its confirm runs and its mean change against the frozen base, each with its
95 % interval (the `confirm/*` metrics of its run); confirmed rows rank first, by that mean. The
confirm runs themselves are not rows.
"""

import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from tracking.errors import ArgumentParser, TrackingError, cli_main
from tracking.layout import CONFIRM_METRIC_PREFIX, PHASE_TAG, STATUS_TAG, TRIAL_ID_TAG, WINDOWS_HASH_TAG
from tracking.params import finite_or_none
from tracking.runs import SweepTracker
from tracking.server import resolve_tracking_uri
from vggt_common.files import atomic_write

# (row key, column title) in leaderboard order.
COLUMNS = [
    ("rank", "rank"),
    ("run_name", "trial"),
    ("strategy", "strategy"),
    ("lora_rank", "r"),
    ("lr", "lr"),
    ("best_val_abs_rel", "best val AbsRel (search, single seed)"),
    ("confirm_abs_rel", "confirmed AbsRel [95 % CI]"),
    ("confirm_delta", "confirmed − base [95 % CI]"),
    ("confirm_runs", "seeds"),
    ("delta1", "δ1"),
    ("trainable_params", "trainable params"),
    ("cost", "cost"),
    ("cost_unit", "cost unit"),
    ("epochs", "epochs"),
    ("status", "status"),
    ("run_id", "run id"),
]


@dataclass(frozen=True)
class Estimate:
    """A mean with its interval (bounds None where not finite, e.g. over a single scene)."""

    mean: float
    low: float | None
    high: float | None

    def __str__(self) -> str:
        low, high = ("–" if v is None else f"{v:.4f}" for v in (self.low, self.high))
        return f"{self.mean:.4f} [{low}, {high}]"


def build_leaderboard(tracker: SweepTracker, skipped: list | None = None) -> list[dict]:
    """One row per search trial of the tracker's sweep: confirmed configurations first by their
    mean over their confirm runs, then the others by best validation AbsRel (rank 1 is the best).

    `best_val_abs_rel` is the minimum of the `val/abs_rel` history (one seed) and `delta1` is
    `val/delta1` at that same step; `curve` holds `[(epoch, val/abs_rel), ...]` (per-epoch metrics
    are logged at step = epoch) for plotting. `confirm_abs_rel` and `confirm_delta` (`Estimate`s)
    and `confirm_runs` are set on confirmed configurations, else None.

    Only runs scored on the sweep's validation windows are ranked: when the parent run has a
    `val.windows_hash`, a scored run with another hash (or none) is left out and appended to
    `skipped` (if given), so nothing is compared across different windows.
    """
    expected = tracker.get_run(tracker.require_parent()).data.tags.get(WINDOWS_HASH_TAG)
    rows = []
    for run in tracker.trial_runs():
        if run.data.tags.get(PHASE_TAG, "search") != "search":  # a confirm run: summarised on its row
            continue
        row = _trial_row(tracker, run)
        if expected is not None and row["best_val_abs_rel"] is not None and row["windows_hash"] != expected:
            if skipped is not None:
                skipped.append(row)
            continue
        rows.append(row)
    rows.sort(key=lambda r: (r["confirm_abs_rel"] is None, getattr(r["confirm_abs_rel"], "mean", 0.0),
                             r["best_val_abs_rel"] is None, r["best_val_abs_rel"] or 0.0,
                             r["cost"] if r["cost"] is not None else math.inf))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _trial_row(tracker: SweepTracker, run) -> dict:
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    run_id = run.info.run_id
    abs_rel = {m.step: m.value for m in tracker.metric_history(run_id, "val/abs_rel")}
    finite = {s: v for s, v in abs_rel.items() if finite_or_none(v) is not None}
    best_step = min(finite, key=finite.get) if finite else None
    delta1 = None
    if best_step is not None:
        delta1 = {m.step: m.value for m in tracker.metric_history(run_id, "val/delta1")}.get(best_step)
    cost_key = "cost/gpu_seconds" if "cost/gpu_seconds" in metrics else "cost/cpu_seconds"
    return {
        "rank": None,
        "run_id": run_id,
        "run_name": run.info.run_name,
        "trial_id": tags.get(TRIAL_ID_TAG, ""),
        "strategy": params.get("lora.strategy", ""),
        "lora_rank": _number(params.get("lora.rank")),
        "lr": _number(params.get("optim.lr")),
        "best_val_abs_rel": finite[best_step] if best_step is not None else None,
        "delta1": delta1,
        "trainable_params": _number(params.get("lora.trainable_params")),
        "cost": finite_or_none(metrics.get(cost_key)),
        "cost_unit": {"cost/gpu_seconds": "gpu_s", "cost/cpu_seconds": "cpu_s"}[cost_key] if cost_key in metrics else "",
        "epochs": len(abs_rel),
        "status": tags.get(STATUS_TAG, run.info.status.lower()),
        "curve": sorted(abs_rel.items()),
        "windows_hash": tags.get(WINDOWS_HASH_TAG),
        "confirm_abs_rel": _estimate(metrics, "abs_rel"),
        "confirm_delta": _estimate(metrics, "abs_rel_delta"),
        "confirm_runs": int(metrics[CONFIRM_METRIC_PREFIX + "num_runs"]) if CONFIRM_METRIC_PREFIX + "num_runs"
        in metrics else None,
    }


def _estimate(metrics: dict, name: str) -> Estimate | None:
    """`confirm/<name>` with its `_ci_low`/`_ci_high` bounds, or None (not confirmed)."""
    key = CONFIRM_METRIC_PREFIX + name
    if finite_or_none(metrics.get(key)) is None:
        return None
    return Estimate(metrics[key], finite_or_none(metrics.get(key + "_ci_low")),
                    finite_or_none(metrics.get(key + "_ci_high")))


def write_leaderboard(rows: list[dict], out_dir) -> tuple[Path, Path]:
    """Write `leaderboard.csv` (an `Estimate` as three columns: `<key>`, `<key>_ci_low`,
    `<key>_ci_high`) and `leaderboard.md` to `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    estimates = ("confirm_abs_rel", "confirm_delta")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([name for key, _ in COLUMNS
                     for name in ((key, f"{key}_ci_low", f"{key}_ci_high") if key in estimates else (key,))])
    for row in rows:
        cells = []
        for key, _ in COLUMNS:
            value = row.get(key)
            parts = (value.mean, value.low, value.high) if isinstance(value, Estimate) else \
                (None, None, None) if key in estimates else (value,)
            cells += ["" if v is None else v for v in parts]
        writer.writerow(cells)
    csv_path = atomic_write(out_dir / "leaderboard.csv", buffer.getvalue())
    md_path = atomic_write(out_dir / "leaderboard.md", format_leaderboard(rows) + "\n")
    return csv_path, md_path


def format_leaderboard(rows: list[dict]) -> str:
    """The leaderboard as a Markdown table (also what the CLI prints)."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(key, row.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def write_plots(rows: list[dict], out_dir) -> list[Path]:
    """Learning curves and the two Pareto plots as PNGs in `out_dir`; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        if row["curve"]:
            xs, ys = zip(*row["curve"])
            ax.plot(xs, ys, marker="o", label=f"#{row['rank']} {row['run_name']} ({row['status']})")
    ax.set(xlabel="epoch", ylabel="val AbsRel (lower is better)", title="Validation AbsRel per trial")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if any(row["curve"] for row in rows):
        ax.legend(fontsize=7, loc="best")
    paths.append(_save(fig, out_dir / "val_abs_rel_curves.png"))

    for key, label, name in (("trainable_params", "trainable parameters", "pareto_trainable_params.png"),
                             ("cost", "cost (" + _cost_unit(rows) + ")", "pareto_cost.png")):
        points = [(row[key], row["best_val_abs_rel"], row) for row in rows
                  if finite_or_none(row[key]) is not None and row["best_val_abs_rel"] is not None]
        front = pareto_front([(x, y) for x, y, _ in points])
        fig, ax = plt.subplots(figsize=(7, 5))
        if points:
            ax.scatter([p[0] for p in points], [p[1] for p in points], c="tab:blue", s=30, label="trial", zorder=3)
            for x, y, row in points:
                ax.annotate(f"#{row['rank']} {row['strategy']} r={_fmt('lora_rank', row['lora_rank'])}",
                            (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
            ax.plot(*zip(*front), color="tab:red", marker="D", markersize=9, markerfacecolor="none",
                    drawstyle="steps-post", label="Pareto front (no trial better in both)", zorder=2)
            if key == "trainable_params" and min(p[0] for p in points) > 0:
                ax.set_xscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no trial has both {key} and val AbsRel", ha="center", transform=ax.transAxes)
        ax.set(xlabel=label, ylabel="best val AbsRel", title=f"Best val AbsRel vs {label}")
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out_dir / name))
    return paths


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both coordinates (both minimised), by increasing x."""
    front, best_y = [], math.inf
    for x, y in sorted(points):
        if y < best_y:
            front.append((x, y))
            best_y = y
    return front


def compare(tracker: SweepTracker, out_dir, log_to_parent: bool = True,
            rows: list[dict] | None = None) -> tuple[list[dict], list[Path]]:
    """Build the leaderboard (unless given), write files and plots, log them to the parent run."""
    if rows is None:
        skipped = []
        rows = build_leaderboard(tracker, skipped)
        if skipped:
            print(f"left out of the leaderboard: {len(skipped)} run(s) scored on other validation windows "
                  f"({', '.join(r['run_name'] for r in skipped)})", flush=True)
    files = [*write_leaderboard(rows, out_dir), *write_plots(rows, out_dir)]
    if log_to_parent:
        for path in files:
            tracker.client.log_artifact(tracker.parent_run_id, str(path), "comparison")
    return rows, files


def _cost_unit(rows) -> str:
    units = {row["cost_unit"] for row in rows if row["cost_unit"]}
    return "/".join(sorted(units)) or "s"


def _number(text):
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "e" not in text.lower() and "." not in text else value


def _fmt(key: str, value) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, Estimate):
        return str(value)
    if key in ("best_val_abs_rel", "delta1") and isinstance(value, float):
        return f"{value:.4f}"
    if key == "lr" and isinstance(value, float):
        return f"{value:.2e}"
    if key == "cost" and isinstance(value, float):
        return f"{value:.1f}"
    if key == "trainable_params" and isinstance(value, (int, float)):
        return f"{int(value):,}"
    return str(value)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


@cli_main
def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m tracking.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", required=True, help="experiment (= sweep) name")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or the local server")
    parser.add_argument("--parent-run-id", default=None, help="default: the newest sweep parent in the experiment")
    parser.add_argument("--out", default=None, help="output directory (default: ./comparison/<experiment>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    args = parser.parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri, start=False)
    tracker = SweepTracker(uri, args.experiment, parent_run_id=args.parent_run_id, create=False)
    if args.parent_run_id:
        tracker.get_run(args.parent_run_id)
    tracker.require_parent()
    rows = build_leaderboard(tracker)
    if not rows:
        raise TrackingError(f"experiment {args.experiment!r} has no trial runs under parent {tracker.parent_run_id}")
    out_dir = Path(args.out or Path("comparison") / args.experiment.replace("/", "_"))
    rows, files = compare(tracker, out_dir, log_to_parent=not args.no_log, rows=rows)
    print(format_leaderboard(rows))
    print(f"\nwrote {', '.join(str(p) for p in files)}")
    if not args.no_log:
        print(f"logged to parent run {tracker.parent_run_id} under comparison/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
