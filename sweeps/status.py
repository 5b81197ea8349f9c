"""How is a sweep doing? From any machine that sees the sweep folder, while it runs or after.

    python -m sweeps status NAME [--storage-path P] [--tracking-uri U]
    vggt-sweep-status NAME ...

    sweep vggt-lora-strategies: running for 3 min 12 s (driver pid 4242 on head-node); 8 trials ...
      running 2 · done 3 · stopped 2 · failed 0 · pending 1 | best val/abs_rel 0.2672 (...) | ETA ~2 min 10 s
      storage  /shared/sweeps/vggt-lora-strategies
      MLflow   http://mlflow:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=...

Sources, all in the sweep folder but the last: `sweep.json` (written by the driver when it starts:
the budget, concurrency, MLflow address, driver pid and host), Tune's newest
`experiment_state-*.json` (every trial's status, epochs, time and best metric), `summary.json`
(the sweep finished), `mlflow_parent_run_id`; and the MLflow server (run names, the champion
decision, the UI links). Without MLflow the counts still come from the folder.

Exit codes: 0, or 2 for an unknown sweep or a bad flag (one line).
"""

from __future__ import annotations

import glob
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

from lora_train.errors import ArgumentParser, UserError, cli_main
from sweeps.console import TrialState, duration, format_progress, progress
from sweeps.preflight import DEFAULT_STORAGE, PARENT_RUN_FILE
from vggt_common.files import atomic_write

RECORD_FILE = "sweep.json"


def record_sweep(plan, concurrency: int) -> None:
    """Driver side, at every start (a resume may change the budget): what `status` needs."""
    space = plan.space
    atomic_write(plan.sweep_dir / RECORD_FILE, json.dumps({
        "name": space.name, "experiment": plan.experiment, "tracking_uri": plan.tracking_uri,
        "num_samples": space.num_samples, "max_epochs": space.max_epochs, "concurrency": concurrency,
        "metric": space.metric, "mode": space.mode, "started": time.time(),
        "host": socket.gethostname(), "pid": os.getpid()}, indent=1))


def trial_states(sweep_dir: Path, metric: str, mode: str, names: dict) -> list[TrialState]:
    """Every trial of Tune's newest experiment state (`names`: trial id → run name)."""
    paths = sorted(glob.glob(str(sweep_dir / "experiment_state-*.json")), key=os.path.getmtime)
    if not paths:
        return []
    for attempt in range(3):  # Tune rewrites the file while the sweep runs
        try:
            with open(paths[-1]) as f:
                data = json.load(f)
            break
        except ValueError:
            time.sleep(0.2 * (attempt + 1))
    else:
        return []
    states = []
    for trial_json, runtime_json in data.get("trial_data", []):
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        last = runtime.get("last_result") or {}
        best = (runtime.get("metric_analysis", {}).get(metric) or {}).get(mode)
        states.append(TrialState(
            trial["trial_id"], names.get(trial["trial_id"], trial["trial_id"]), trial.get("status", "PENDING"),
            int(last.get("training_iteration") or 0), float(last.get("time_total_s") or 0.0),
            last.get("train_status") == "diverged",
            best if isinstance(best, (int, float)) and math.isfinite(best) else None))
    return states


def sweep_status(sweep_dir: Path, tracking_uri: str | None = None) -> list[str]:
    """The status lines of the sweep in `sweep_dir`."""
    record = _read_json(sweep_dir / RECORD_FILE) or {}
    metric, mode = record.get("metric", "val/abs_rel"), record.get("mode", "min")
    tracker, mlflow_note = _tracker(sweep_dir, record, tracking_uri)
    names, parent_tags = {}, {}
    if tracker is not None:
        from tracking.layout import TRIAL_ID_TAG

        names = {run.data.tags.get(TRIAL_ID_TAG): run.info.run_name for run in tracker.trial_runs()}
        parent_tags = tracker.get_run(tracker.parent_run_id).data.tags
    states = trial_states(sweep_dir, metric, mode, names)
    max_epochs = record.get("max_epochs") or max((s.epochs for s in states), default=1)
    total = max(record.get("num_samples") or 0, len(states))

    started = record.get("started")
    summary_path = sweep_dir / "summary.json"
    finished = summary_path.is_file() and (started is None or summary_path.stat().st_mtime >= started)
    if finished:
        state, end = "finished", summary_path.stat().st_mtime
    elif parent_tags.get("sweep.status") == "interrupted":
        state, end = "interrupted (nothing decided; run it again with --resume)", None
    elif record and not _driver_alive(record):
        state, end = "not running: its driver is gone (killed?); run it again with --resume", None
    else:
        state, end = "running", time.time()
    elapsed = f" for {duration(end - started)}" if started and end else ""
    if finished:
        elapsed = f" in {duration(end - started)}" if started else ""
    driver = f" (driver pid {record['pid']} on {record['host']})" if record and state == "running" else ""
    budget = f"; {total} trials of up to {max_epochs} epochs, {record.get('concurrency', '?')} at a time"

    concurrency = max(record.get("concurrency") or 1, 1)
    summary = progress(states, total, max_epochs, concurrency, mode)
    lines = [f"sweep {record.get('name', sweep_dir.name)}: {state}{elapsed}{driver}{budget}",
             "  " + format_progress(summary, metric, eta=state == "running"),
             f"  storage  {sweep_dir}"]
    if "champion.decision" in parent_tags:
        lines.append(f"  champion {parent_tags['champion.decision']}: {parent_tags.get('champion.reason', '')}")
    report = (_read_json(summary_path) or {}).get("report") if finished else None
    if report:
        lines.append(f"  report   {report}")
    if tracker is not None:
        from tracking import ui

        lines.append(f"  MLflow   {ui.runs_url(tracker.tracking_uri, tracker.experiment_id)}")
    else:
        lines.append(f"  MLflow   {mlflow_note}")
    return lines


def _tracker(sweep_dir: Path, record: dict, tracking_uri: str | None):
    """The sweep's `SweepTracker`, or (None, why not)."""
    from tracking.errors import TrackingError
    from tracking.runs import SweepTracker

    parent_file = sweep_dir / PARENT_RUN_FILE
    if not parent_file.is_file():
        return None, "no parent run recorded yet"
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or record.get("tracking_uri")
    if not uri:
        return None, "unknown server (pass --tracking-uri)"
    try:
        tracker = SweepTracker(uri, record.get("experiment", sweep_dir.name),
                               parent_run_id=parent_file.read_text().strip(), create=False)
        tracker.get_run(tracker.parent_run_id)
    except TrackingError as err:
        return None, str(err)
    return tracker, ""


def _driver_alive(record: dict) -> bool:
    """Only knowable on the driver's host; elsewhere assume it runs."""
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    return True


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def parse_args(argv):
    p = ArgumentParser(prog="python -m sweeps status", description=__doc__.splitlines()[0])
    p.add_argument("name", help="the sweep's name (its folder under --storage-path)")
    p.add_argument("--storage-path", help=f"where sweeps are stored (default: ./{DEFAULT_STORAGE})")
    p.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI or the one the sweep used)")
    return p.parse_args(argv)


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    storage = Path(args.storage_path or DEFAULT_STORAGE).expanduser().resolve()
    sweep_dir = storage / args.name
    if not any((sweep_dir / f).exists() for f in (RECORD_FILE, PARENT_RUN_FILE)) and \
            not glob.glob(str(sweep_dir / "experiment_state-*.json")):
        raise UserError(f"no sweep named {args.name!r} in {storage}")
    print("\n".join(sweep_status(sweep_dir, args.tracking_uri)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
