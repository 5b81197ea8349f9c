"""The sweep report: one self-contained HTML page (inline CSS, images as data URIs, no script, no
external resource), written next to the leaderboard and logged to the parent run, whose artifact
viewer renders it inline.

    sweep_report.html
      the champion decision   parent tags `champion.*` (decision, Δ vs base and its interval, reason)
      the leaderboard         every trial, linked to its run in the MLflow UI
      learning curves         val AbsRel per epoch, one panel per strategy
      Pareto front(s)         the sweep folder's `pareto*.png` (tracking.compare, the MO search)
      parameter importance    the sweep folder's `importance.png`, when the search wrote one
"""

import base64
import html
import io
import time
from pathlib import Path

from tracking import ui
from tracking.compare import COLUMNS, _fmt
from vggt_common.files import atomic_write

REPORT_FILE = "sweep_report.html"
# (file in the sweep folder, caption) shown when present.
FIGURES = [
    ("pareto.png", "Pareto front of the sweep's objectives"),
    ("pareto_trainable_params.png", "Pareto front: best val AbsRel vs trainable parameters"),
    ("pareto_cost.png", "Pareto front: best val AbsRel vs cost"),
    ("importance.png", "Parameter importance"),
]
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1f272d;max-width:1200px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dee4}
.muted{color:#5f7281} a{color:#2272b4}
.scroll{overflow-x:auto} table{border-collapse:collapse;font-size:13px}
th,td{padding:4px 8px;border-bottom:1px solid #e8ecf0;text-align:right} td{white-space:nowrap}
th{background:#f4f6f8} td.l,th.l{text-align:left}
.decision{padding:12px 16px;border-radius:6px;border:1px solid #d8dee4;background:#f7f9fb}
.decision b.promoted{color:#277c43} .decision b.kept{color:#8a6d00} .decision b.rejected{color:#c82d4c}
figure{margin:12px 0} figcaption{color:#5f7281;font-size:12px} img{max-width:100%;border:1px solid #e8ecf0}
"""


def write_report(tracker, rows: list[dict], out_dir, metric: str = "val/abs_rel") -> Path:
    """Write `<out_dir>/sweep_report.html` for the tracker's sweep, log it to the parent run.

    Args:
        tracker: the sweep's `SweepTracker` (parent run set).
        rows: the leaderboard (`tracking.compare.build_leaderboard`).
        out_dir: the sweep folder (holds the leaderboard and the figures).
        metric: the sweep's metric (named in the headings).
    """
    out_dir = Path(out_dir)
    parent = tracker.get_run(tracker.require_parent())
    page = _page(tracker, parent, rows, out_dir, metric)
    path = atomic_write(out_dir / REPORT_FILE, page)
    tracker.client.log_artifact(parent.info.run_id, str(path))
    return path


def _page(tracker, parent, rows, out_dir: Path, metric: str) -> str:
    uri, experiment_id = tracker.tracking_uri, tracker.experiment_id
    name = parent.data.tags.get("sweep.name", parent.info.run_name)
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(parent.info.start_time / 1000))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep {_e(name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Sweep {_e(name)}</h1>",
        f"<div class='muted'>experiment {_e(tracker.experiment)} · started {started} · {len(rows)} trials ("
        + ", ".join(f"{n} {_e(s)}" for s, n in sorted(counts.items())) + ") · "
        f"<a href='{_e(ui.runs_url(uri, experiment_id))}' target='_blank'>runs in MLflow</a> · "
        f"<a href='{_e(ui.runs_url(uri, experiment_id, ui.TOP_RUNS_VIEW, charts=True))}' target='_blank'>"
        "compare the top runs</a> · "
        f"<a href='{_e(ui.run_url(uri, experiment_id, parent.info.run_id))}' target='_blank'>parent run</a></div>",
        "<h2>Champion decision</h2>", _decision(parent.data.tags, rows, metric),
        "<h2>Leaderboard</h2>", _leaderboard(rows, uri, experiment_id),
        f"<h2>Learning curves ({_e(metric)} per epoch, by strategy)</h2>", _curves(rows, metric),
    ]
    for file, caption in FIGURES:
        if (out_dir / file).is_file():
            parts.append(f"<h2>{_e(caption)}</h2>" + _figure((out_dir / file).read_bytes(), caption))
    if not (out_dir / "importance.png").is_file():
        parts.append("<h2>Parameter importance</h2><p class='muted'>not computed for this sweep "
                     "(no importance.png in the sweep folder)</p>")
    parts.append("<p class='muted'>Links open the MLflow UI; from MLflow's artifact viewer, open them "
                  "in a new tab (the viewer's frame may not navigate).</p></body></html>")
    return "\n".join(parts)


def _decision(tags: dict, rows: list[dict], metric: str) -> str:
    decision = tags.get("champion.decision")
    best = next((r for r in rows if r["best_val_abs_rel"] is not None), None)
    best_line = (f"best trial <b>{_e(best['run_name'])}</b>: best {_e(metric)} {best['best_val_abs_rel']:.4f}"
                 if best else "no trial produced a result")
    if decision is None:
        return f"<div class='decision'>{best_line}<br><span class='muted'>no champion decision recorded " \
               "on the parent run</span></div>"
    lines = [f"decision: <b class='{_e(decision)}'>{_e(decision)}</b>", best_line]
    for key, label in (("delta_vs_base", "adapter − base"), ("delta_vs_champion", "adapter − current champion")):
        if f"champion.{key}" in tags:
            low, high = tags.get(f"champion.{key}_ci_low"), tags.get(f"champion.{key}_ci_high")
            interval = f" [{_e(low)}, {_e(high)}]" if low is not None and high is not None else ""
            lines.append(f"{label} AbsRel: {_e(tags[f'champion.{key}'])}{interval}")
    detail = [f"{k.split('.', 1)[1].replace('_', ' ')} {_e(tags[k])}" for k in
              ("champion.confidence", "champion.num_scenes", "champion.num_windows") if k in tags]
    if detail:
        lines.append("<span class='muted'>" + " · ".join(detail) + "</span>")
    if "champion.reason" in tags:
        lines.append(f"reason: {_e(tags['champion.reason'])}")
    return "<div class='decision'>" + "<br>".join(lines) + "</div>"


def _leaderboard(rows: list[dict], uri: str, experiment_id: str) -> str:
    keys = [(k, t) for k, t in COLUMNS if k != "run_id"]
    head = "".join(f"<th class='{'l' if k in ('run_name', 'strategy', 'status') else ''}'>{_e(t)}</th>"
                   for k, t in keys)
    body = []
    for row in rows:
        cells = []
        for key, _ in keys:
            text = _e(_fmt(key, row.get(key)))
            if key == "run_name":
                text = f"<a href='{_e(ui.run_url(uri, experiment_id, row['run_id']))}' target='_blank'>{text}</a>"
            cells.append(f"<td class='{'l' if key in ('run_name', 'strategy', 'status') else ''}'>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _curves(rows: list[dict], metric: str) -> str:
    """One panel per strategy, one line per trial (dashed: stopped early or failed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    strategies = sorted({r["strategy"] for r in rows if r["curve"]})
    if not strategies:
        return "<p class='muted'>no trial logged a validation epoch</p>"
    fig, axes = plt.subplots(1, len(strategies), figsize=(4.2 * len(strategies), 3.4), sharey=True, squeeze=False)
    for ax, strategy in zip(axes[0], strategies):
        for row in (r for r in rows if r["strategy"] == strategy and r["curve"]):
            xs, ys = zip(*row["curve"])
            ax.plot(xs, ys, marker="o", markersize=3, linestyle="-" if row["status"] == "completed" else "--",
                    label=f"#{row['rank']} {row['run_name']}")
        last = max(x for r in rows if r["strategy"] == strategy for x, _ in r["curve"])
        ax.set(title=f"strategy {strategy}", xlabel="epoch", xlim=(0.5, last + 0.5))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"{metric} (lower is better)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return _figure(buffer.getvalue(), f"{metric} per epoch; solid: completed, dashed: stopped early or failed")


def _figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'><figcaption>{_e(caption)}" \
           "</figcaption></figure>"


def _e(value) -> str:
    return html.escape(str(value), quote=True)
