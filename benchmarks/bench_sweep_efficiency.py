"""Sweep efficiency: the share of wall-clock × concurrency spent inside training steps.

Runs real sweeps whose trials train for about a minute each (ASHA off: every trial runs its full
length), once per launcher, and prints them side by side:

  in_trial   the Tune trial trains in its own (reused) process — the default for 1-worker trials
  ray_train  the trial drives a Ray Train TorchTrainer (controller + worker processes per trial),
             what DDP trials use

Inside-step time is the sum of every trial's `time/step_s` (logged to MLflow by the trainer: data
loading, forward, backward, optimizer step). Everything else — Ray start, trial processes,
model build, per-epoch validation and checkpoints, the final base-vs-adapter evaluation, tracking,
leaderboard and champion — is overhead. Goal: >= 0.90.

    python benchmarks/bench_sweep_efficiency.py [--num-samples 3] [--epochs 6] [--launchers in_trial,ray_train]
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from sweeps.driver import run_sweep  # noqa: E402
from sweeps.run import parse_args  # noqa: E402
from tracking.runs import SweepTracker  # noqa: E402


def measure(args, launcher: str, work: Path) -> dict:
    raw = yaml.safe_load(Path(args.space).read_text())
    raw["name"] = f"bench-efficiency-{launcher.replace('_', '-')}-{work.name[-6:]}"
    raw["budget"].update({"num_samples": args.num_samples, "max_epochs": args.epochs,
                          "max_concurrent": args.max_concurrent})
    raw["resources"]["launcher"] = launcher
    raw["selection"] = {"top_k": 0}  # the search's trials alone: no confirm phase after it
    raw["asha"]["grace_period"] = args.epochs
    raw["base_config"]["overrides"].update({
        "train.steps_per_epoch": args.steps_per_epoch, "data.synthetic_scenes": args.scenes,
        "eval.max_windows": args.val_windows,
    })
    space = work / f"space-{launcher}.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    flags = ["--space", str(space), "--storage-path", str(work / "store")]
    if args.tracking_uri:
        flags += ["--tracking-uri", args.tracking_uri]
    started = time.time()
    summary = run_sweep(parse_args(flags))
    wall = time.time() - started
    tracker = SweepTracker(summary["tracking_uri"], raw["name"], create=False)
    steps, trial_wall, startups, epoch_gaps = 0.0, 0.0, [], []
    for run in sorted(tracker.trial_runs(), key=lambda r: r.info.start_time):
        history = tracker.metric_history(run.info.run_id, "time/step_s")
        # per epoch: from the end of an epoch's last step to the end of the next epoch's first
        # step, less that step (validation, checkpoint, reports, the next epoch's data loader)
        epoch_starts = [m for m in history if m.step in _first_steps(tracker, run.info.run_id)]
        for before, first in zip(_last_steps(history, epoch_starts), epoch_starts):
            epoch_gaps.append((first.timestamp - before.timestamp) / 1000 - first.value)
        steps += sum(m.value for m in history)
        trial_wall += (run.info.end_time - run.info.start_time) / 1000
        # start-up: from the run's start to the start of its first step (process, model, data)
        startups.append((history[0].timestamp - run.info.start_time) / 1000 - history[0].value)
    trials = len(startups)
    concurrency = min(args.max_concurrent, args.num_samples)
    return {"wall": wall, "trial_wall": trial_wall, "steps": steps, "trials": trials,
            "sweep_eff": steps / (wall * concurrency), "trial_eff": steps / trial_wall,
            "overhead_per_trial": (trial_wall - steps) / trials, "startup_first": startups[0],
            "startup_later": sum(startups[1:]) / max(trials - 1, 1),
            "rest_per_trial": (trial_wall - steps - sum(startups)) / trials,
            "per_epoch": sum(epoch_gaps) / max(len(epoch_gaps), 1),
            "outside_trials": wall - trial_wall / concurrency}


def _first_steps(tracker, run_id: str) -> set[int]:
    """Global steps that start an epoch after the first: where the logged epoch fraction
    (epoch + share of it done, e.g. 1.0 at the end of the first epoch) enters a new epoch."""
    fractions = sorted(tracker.metric_history(run_id, "train/epoch_fraction"), key=lambda m: m.step)
    return {int(m.step) for prev, m in zip(fractions, fractions[1:])
            if math.ceil(m.value - 1e-9) > math.ceil(prev.value - 1e-9)}


def _last_steps(history, epoch_starts):
    by_step = {int(m.step): m for m in history}
    return [by_step[int(first.step) - 1] for first in epoch_starts]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="sweeps/strategies.yaml")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--epochs", type=int, default=6, help="6 epochs of 12 scenes ≈ 1 min of tiny-model steps on one core")
    p.add_argument("--steps-per-epoch", type=int, default=1000, help="capped by the training windows")
    p.add_argument("--scenes", type=int, default=12, help="synthetic scenes (more scenes, longer epochs)")
    p.add_argument("--val-windows", type=int, default=12, help="validation windows per epoch (the shipped sweep has 12)")
    p.add_argument("--max-concurrent", type=int, default=1)
    p.add_argument("--launchers", default="in_trial,ray_train", help="comma-separated, run in this order")
    p.add_argument("--tracking-uri", default=None)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-eff-"))
    launchers = args.launchers.split(",")
    results = {launcher: measure(args, launcher, work) for launcher in launchers}

    print()
    print(f"{args.num_samples} trials × {args.epochs} epochs × {args.steps_per_epoch} steps, "
          f"{min(args.max_concurrent, args.num_samples)} at once")
    rows = [
        ("sweep wall (incl. Ray start, leaderboard)", "wall", "{:.1f} s"),
        ("trial run time, summed (MLflow)", "trial_wall", "{:.1f} s"),
        ("inside training steps, summed", "steps", "{:.1f} s"),
        ("overhead per trial", "overhead_per_trial", "{:.1f} s"),
        ("  start-up, first trial (process, model, data)", "startup_first", "{:.1f} s"),
        ("  start-up, later trials", "startup_later", "{:.1f} s"),
        ("  validation, checkpoints, base comparison", "rest_per_trial", "{:.1f} s"),
        ("    of which per epoch (validation, checkpoint, report)", "per_epoch", "{:.2f} s"),
        ("outside trials (Ray start, leaderboard)", "outside_trials", "{:.1f} s"),
        ("efficiency: steps / (wall × concurrency)", "sweep_eff", "{:.3f}"),
        ("efficiency: steps / trial run time", "trial_eff", "{:.3f}"),
    ]
    print(f"{'':50}" + "".join(f"{launcher:>14}" for launcher in launchers))
    for label, key, fmt in rows:
        print(f"{label:50}" + "".join(f"{fmt.format(results[l][key]):>14}" for l in launchers))
    if len(launchers) == 2:
        a, b = launchers
        print(f"{'wall ratio ' + b + ' / ' + a:50}{results[b]['wall'] / results[a]['wall']:>14.2f}")
    print("goal: efficiency >= 0.90")


if __name__ == "__main__":
    main()
