"""A two-objective sweep end to end (stand-in trainer, real Ray, Optuna and MLflow): the front
tagged in MLflow, the hypervolume and plots on the parent, Optuna told PRUNED/COMPLETE with
vectors and constraints, and the scheduler's rung tables carried over a `--resume`."""

import glob
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import ray.cloudpickle as cloudpickle

from tracking.runs import SweepTracker

STANDIN = Path(__file__).resolve().parent / "standin_sweep.py"
SPACE = textwrap.dedent("""\
    name: two-objectives
    budget: {num_samples: 4, max_epochs: 2}
    resources: {cpus_per_trial: 1}
    asha: {grace_period: 1, reduction_factor: 2}
    sampler: {seed: 5, n_startup_trials: 3}
    objectives:
      - {metric: val/abs_rel, mode: min}
      - {metric: adapter/trainable_params, mode: min}
    constraints: ["adapter/trainable_params <= 88"]   # the stand-in's adapter has 8 x rank parameters
    strategies:
      A: {}
      C:
        optim.lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}
    parameters:
      lora.rank: {type: int, low: 4, high: 12}
      optim.lr: {type: float, low: 3.0e-4, high: 1.0e-2, log: true}
    points_to_evaluate:   # each dominates the ones before (the first is infeasible): all run to the end
      - {lora.strategy: A, lora.rank: 12, optim.lr: 1.0e-2}
      - {lora.strategy: A, lora.rank: 8, optim.lr: 3.0e-3}
      - {lora.strategy: C, lora.rank: 6, optim.lr: 1.0e-3}
      - {lora.strategy: C, lora.rank: 4, optim.lr: 1.0e-3}
    """)


def run_standin(args):
    env = {**os.environ, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300", "STANDIN_EPOCH_S": "0.2"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(STANDIN), *args], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def rung_tables(sweep_dir: Path) -> dict:
    """{milestone: {trial_id: metrics}} from the scheduler state Tune saved with the experiment."""
    path = sorted(glob.glob(str(sweep_dir / "callback-states-*.pkl")))[-1]  # named by the driver's start time
    with open(path, "rb") as f:
        states = cloudpickle.load(f)
    state = next(s for s in states.values() if isinstance(s, dict) and "milestones" in s)
    return {m: {k: e["metrics"] for k, e in recorded.items()} for m, recorded in zip(state["milestones"], state["recorded"])}


def non_dominated(points: dict) -> set:
    """Brute force: keys whose (a, b) no other point beats in one and matches or beats in the other."""
    return {k for k, (a, b) in points.items()
            if not any(a2 <= a and b2 <= b and (a2 < a or b2 < b) for k2, (a2, b2) in points.items() if k2 != k)}


@pytest.mark.slow
def test_two_objective_sweep_end_to_end_and_resume(tmp_path, sweep_mlflow, sweep_env):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    flags = ["--space", str(space), "--storage-path", str(tmp_path / "store"), "--tracking-uri", sweep_mlflow,
             "--max-concurrent", "1"]
    run_standin(flags)
    sweep_dir = tmp_path / "store" / "two-objectives"
    before = rung_tables(sweep_dir)
    proc = run_standin(flags + ["--resume", "--num-samples", "10"])
    after = rung_tables(sweep_dir)
    # Tune does not save the scheduler; its state callback does: nothing recorded before is lost.
    for milestone, rows in before.items():
        assert rows.items() <= after[milestone].items(), milestone
    assert sum(map(len, after.values())) > sum(map(len, before.values())) >= 4

    tracker = SweepTracker(sweep_mlflow, "two-objectives", create=False)
    runs = tracker.trial_runs()
    assert len(runs) == 10
    scored = {r.info.run_id: r for r in runs if r.data.tags["trial.status"] in ("completed", "early_stopped")}
    points = {k: (r.data.metrics["val/abs_rel"], r.data.metrics["adapter/trainable_params"]) for k, r in scored.items()}
    assert {p[1] for p in points.values()} == {8.0 * int(scored[k].data.params["lora.rank"]) for k in points}
    feasible = {k: p for k, p in points.items() if p[1] <= 88}
    assert 0 < len(feasible) < len(points) or len(feasible) == len(points)
    front = {k for k, r in scored.items() if r.data.tags["sweep.pareto"] == "true"}
    assert front == non_dominated(feasible) and front
    assert all(scored[k].data.tags["sweep.pareto"] == "false" for k in set(scored) - front)
    assert "pareto front (val/abs_rel min, adapter/trainable_params min)" in proc.stdout
    assert "importance for val/abs_rel:" in proc.stdout and "importance for adapter/trainable_params:" in proc.stdout

    parent = tracker.require_parent()
    latest = {}
    for m in tracker.metric_history(parent, "sweep/hypervolume"):  # logged at the end of both runs
        latest[m.step] = m.value
    assert sorted(latest) == list(range(1, len(scored) + 1))
    curve = [latest[k] for k in sorted(latest)]
    assert curve == sorted(curve) and 0 < curve[-1] <= 1
    assert "ideal" in tracker.client.get_run(parent).data.tags["sweep.hypervolume_box"]
    artifacts = {a.path for a in tracker.client.list_artifacts(parent)}
    assert {"pareto.png", "importance.png", "importance.json"} <= artifacts

    study = optuna.load_study(study_name="two-objectives", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    statuses = [r.data.tags["trial.status"] for r in runs]
    assert states.count("PRUNED") == statuses.count("early_stopped") >= 1
    assert states.count("COMPLETE") == statuses.count("completed") >= 4
    for t in study.trials:
        assert set(t.constraints) == {"adapter/trainable_params <= 88"}
        if t.state.name == "COMPLETE":
            assert len(t.values) == 2
        else:  # never told a truncated vector: the vector at the rung it was stopped at is an attribute
            assert t.values is None and len(t.user_attrs["values@1"]) == 2
