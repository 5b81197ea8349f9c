"""Faults inside trials, on a real local Ray and a real MLflow server.

- The processes that train SIGKILLed mid-epoch (>= 3 times in one sweep), for both launchers: Ray
  Train workers (`ray_train`) and the Tune trial's own process (`in_trial`). Each trial is retried
  from its last checkpoint (no epoch logged twice, no epoch lost) and the sweep completes.
- NaN injected into one trial's loss (`train.inject_nan_at_step`): that trial ends `diverged`,
  every other trial completes with all its epochs.
"""

import json
import textwrap
import time

import pytest

from tests.faults.fault_summary import record, record_counts
from tests.faults.sweep_harness import (
    checkpoints,
    kill_group,
    metric_steps,
    start_sweep,
    sweep_env,
    train_workers,
    tune_results,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

EPOCHS = 3
KILLS = 3
SPACE = textwrap.dedent(f"""\
    name: faults-trials
    budget: {{num_samples: 4, max_epochs: {EPOCHS}}}
    resources: {{cpus_per_trial: 1, workers_per_trial: 1, launcher: LAUNCHER}}
    asha: {{grace_period: {EPOCHS}, reduction_factor: 2}}
    sampler: {{seed: 0, n_startup_trials: 4}}
    failure: {{max_failures: {KILLS}}}
    strategies: {{A: {{}}, B: {{}}}}
    parameters:
      lora.rank: {{type: int, low: 4, high: 8}}
      optim.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
      train.inject_nan_at_step: {{choices: [null, 2]}}
    points_to_evaluate:
      - {{lora.strategy: A, lora.rank: 4, optim.lr: 1.0e-3, train.inject_nan_at_step: null}}
      - {{lora.strategy: B, lora.rank: 8, optim.lr: 1.0e-3, train.inject_nan_at_step: 2}}
      - {{lora.strategy: B, lora.rank: 6, optim.lr: 2.0e-3, train.inject_nan_at_step: null}}
      - {{lora.strategy: A, lora.rank: 5, optim.lr: 5.0e-3, train.inject_nan_at_step: null}}
    """)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("launcher", ["ray_train", "in_trial"])
def test_killed_train_workers_and_a_diverging_trial(tmp_path, mlflow_server_factory, launcher):
    from tracking.runs import SweepTracker

    server = mlflow_server_factory()
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("LAUNCHER", launcher))
    storage = tmp_path / "store"
    sweep_dir = storage / "faults-trials"
    log = tmp_path / "sweep.log"
    driver = start_sweep(["--space", str(space), "--storage-path", str(storage), "--tracking-uri", server.url,
                          "--max-concurrent", "1"], log, sweep_env({"STANDIN_EPOCH_S": "2"}))
    killed = []
    try:
        # Kill a Train worker once it has checkpointed at least one epoch since it started and is
        # half-way into the next one; a restarted worker must checkpoint again before the next kill.
        while len(killed) < KILLS:
            seen = set(checkpoints(sweep_dir))
            workers = wait_for(lambda: [w for w in train_workers(driver, launcher) if w.pid not in killed],
                               600, driver, log, interval=0.2)
            wait_for(lambda: set(checkpoints(sweep_dir)) - seen, 600, driver, log, interval=0.2)
            time.sleep(1.0)  # mid-epoch (2 s epochs)
            victim = workers[0]
            if not victim.is_running():
                continue
            victim.kill()
            killed.append(victim.pid)
            print(f"killed {launcher} training process {victim.pid} after {len(checkpoints(sweep_dir))} checkpoints")
        driver.wait(timeout=900)
    finally:
        if driver.poll() is None:
            kill_group(driver)
    output = log.read_text()
    assert driver.returncode == 0, output[-4000:]

    summary = json.loads((sweep_dir / "summary.json").read_text())
    tracker = SweepTracker(server.url, "faults-trials", create=False)
    runs = tracker.trial_runs()
    assert summary["trials"] == 4 and len(runs) == 4
    by_status = {}
    for run in runs:
        by_status.setdefault(run.data.tags.get("trial.status"), []).append(run)
        assert run.info.status != "RUNNING"
    results = tune_results(sweep_dir)

    # The diverging trial: diverged, and only it.
    diverged = by_status.get("diverged", [])
    assert len(diverged) == 1 and diverged[0].data.params["train.inject_nan_at_step"] == "2", by_status.keys()
    record("faults", "NaN loss injected → trial diverged, others untouched", True,
           f"trial {diverged[0].data.tags['ray.trial_id']}: {diverged[0].data.tags.get('trial.stop_reason', '')}")

    # Every other trial: completed, each epoch in MLflow exactly once (a retry resumed from its
    # checkpoint instead of starting over, and lost nothing).
    healthy = [r for r in runs if r is not diverged[0]]
    survived = 0
    for run in healthy:
        assert run.data.tags["trial.status"] == "completed", run.data.tags
        # Per-epoch metrics are logged at step = epoch: each epoch once, none lost.
        steps = metric_steps(tracker.client, run.info.run_id, "val/abs_rel")
        assert steps == list(range(1, EPOCHS + 1)), (run.data.tags["ray.trial_id"], steps)
        survived += 1
    retried = sum(1 for rows in results.values() for r in rows if r.get("iterations_since_restore") == 1
                  and r["training_iteration"] > 1)
    assert len(killed) >= KILLS
    assert retried >= 1, "no trial resumed from a checkpoint (iterations_since_restore)"
    for pid in killed:
        record("faults", f"training process SIGKILL mid-epoch ({launcher})", True,
               f"pid {pid}; trial retried from checkpoint")
    record_counts("metrics", f"val/abs_rel per epoch, trials with killed workers ({launcher})",
                  len(healthy) * EPOCHS, survived * EPOCHS)
