"""Sweep efficiency: the share of wall-clock × concurrency spent inside training steps.

Runs a real sweep whose trials take about a minute each (ASHA off, so every trial runs its full
length), then sums every trial's per-step time (`time/step_s`, logged to MLflow by the trainer) and
divides by sweep wall time × concurrent trials. What is left is Ray/Train start-up, data loading,
validation, checkpointing and tracking. Goal: >= 0.90.

    python benchmarks/bench_sweep_efficiency.py [--num-samples 2] [--steps-per-epoch 20]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from sweeps.run import parse_args, run_sweep  # noqa: E402
from tracking.runs import SweepTracker  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="sweeps/strategies.yaml")
    p.add_argument("--num-samples", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps-per-epoch", type=int, default=20)
    p.add_argument("--max-concurrent", type=int, default=1)
    p.add_argument("--tracking-uri", default=None)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-eff-"))
    raw = yaml.safe_load(Path(args.space).read_text())
    raw["name"] = f"bench-efficiency-{work.name[-6:]}"
    raw["budget"].update({"num_samples": args.num_samples, "max_epochs": args.epochs,
                          "max_concurrent": args.max_concurrent})
    raw["asha"]["grace_period"] = args.epochs
    raw["base_config"]["overrides"]["train.steps_per_epoch"] = args.steps_per_epoch
    space = work / "space.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    flags = ["--space", str(space), "--storage-path", str(work / "store")]
    if args.tracking_uri:
        flags += ["--tracking-uri", args.tracking_uri]
    started = time.time()
    summary = run_sweep(parse_args(flags))
    wall = time.time() - started
    tracker = SweepTracker(args.tracking_uri or _uri_of(summary), raw["name"], create=False)
    step_seconds, trial_wall = 0.0, 0.0
    for run in tracker.trial_runs():
        step_seconds += sum(m.value for m in tracker.metric_history(run.info.run_id, "time/step_s"))
        trial_wall += (run.info.end_time - run.info.start_time) / 1000
    concurrency = min(args.max_concurrent, args.num_samples)
    print()
    print(f"trials {args.num_samples} × {args.epochs} epochs × {args.steps_per_epoch} steps, concurrency {concurrency}")
    print(f"sweep wall (incl. Ray start)   {wall:8.1f} s")
    print(f"trial run time (MLflow)        {trial_wall:8.1f} s   ({trial_wall / args.num_samples:.1f} s per trial)")
    print(f"inside training steps          {step_seconds:8.1f} s")
    print(f"efficiency  steps / (wall × concurrency)        {step_seconds / (wall * concurrency):.3f}")
    print(f"efficiency  steps / trial run time (per trial)  {step_seconds / trial_wall:.3f}")


def _uri_of(summary) -> str:
    from tracking.server import resolve_tracking_uri

    return resolve_tracking_uri(None)


if __name__ == "__main__":
    main()
