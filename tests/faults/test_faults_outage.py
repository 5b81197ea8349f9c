"""The MLflow server goes down for 30 s while trials run: once it is back, 0 metrics are lost."""

import json
import textwrap
import time

import pytest

from tests.faults.fault_summary import record, record_counts
from tests.faults.sweep_harness import checkpoints, epochs_reported, kill_group, start_sweep, sweep_env, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]

OUTAGE_S = 30
EPOCHS = 8
STEPS_PER_EPOCH = 2  # the stand-in logs two optimizer steps per epoch
SPACE = textwrap.dedent(f"""\
    name: faults-outage
    budget: {{num_samples: 2, max_epochs: {EPOCHS}}}
    resources: {{cpus_per_trial: 1, workers_per_trial: 1}}
    asha: {{grace_period: {EPOCHS}, reduction_factor: 2}}
    sampler: {{seed: 0, n_startup_trials: 2}}
    strategies: {{A: {{}}, B: {{}}}}
    parameters:
      lora.rank: {{type: int, low: 4, high: 8}}
      optim.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
    points_to_evaluate:
      - {{lora.strategy: A, lora.rank: 4, optim.lr: 1.0e-3}}
      - {{lora.strategy: B, lora.rank: 8, optim.lr: 2.0e-3}}
    """)


@pytest.mark.timeout(900)
def test_mlflow_outage_during_trials_loses_no_metric(tmp_path, mlflow_server_factory):
    from tracking.runs import SweepTracker
    from tracking.server import MlflowServer

    server = mlflow_server_factory()
    url, port, data_dir = server.url, server.port, server.data_dir
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = tmp_path / "store"
    sweep_dir = storage / "faults-outage"
    log = tmp_path / "sweep.log"
    driver = start_sweep(["--space", str(space), "--storage-path", str(storage), "--tracking-uri", url,
                          "--max-concurrent", "1"], log, sweep_env({"STANDIN_EPOCH_S": "3"}))
    try:
        wait_for(lambda: checkpoints(sweep_dir), 600, driver, log)  # trial 1 is training
        server.stop()
        down_at = time.time()
        before = epochs_reported(log)
        print(f"MLflow server stopped after {before} epoch result(s)")
        while time.time() - down_at < OUTAGE_S:
            assert driver.poll() is None, "sweep died during the outage:\n" + log.read_text()[-4000:]
            time.sleep(1)
        assert MlflowServer(data_dir, port=port).start(timeout=240) == url
        during = epochs_reported(log) - before
        print(f"MLflow server back after {time.time() - down_at:.0f} s; {during} epoch result(s) while down")
        driver.wait(timeout=900)
    finally:
        if driver.poll() is None:
            kill_group(driver)
    assert driver.returncode == 0, log.read_text()[-4000:]
    assert during >= 2, "the outage did not overlap training"  # trials kept training while it was down

    tracker = SweepTracker(url, "faults-outage", create=False)
    runs = tracker.trial_runs()
    assert len(runs) == 2
    logged = found = 0
    problems = []
    for run in runs:
        if run.data.tags.get("trial.status") != "completed" or run.info.status != "FINISHED":
            problems.append((run.data.tags.get("ray.trial_id"), run.data.tags.get("trial.status"), run.info.status))
        # Per-epoch metrics are logged at step = epoch; per-step ones at the optimizer step.
        epoch_steps = list(range(1, EPOCHS + 1))
        expected = {"val/abs_rel": epoch_steps, "val/delta1": epoch_steps,
                    "train/loss": list(range(EPOCHS * STEPS_PER_EPOCH))}
        for key, steps in expected.items():
            history = sorted(m.step for m in tracker.client.get_metric_history(run.info.run_id, key))
            logged += len(steps)
            found += len(set(history) & set(steps))
            if history != steps:
                problems.append((run.data.tags["ray.trial_id"], key, f"{len(history)} of {len(steps)} found"))
    record("faults", f"MLflow server down {OUTAGE_S} s during trials", not problems,
           f"{during} epochs trained while down" + (f"; {problems[0]}" if problems else ""))
    record_counts("metrics", "every epoch/step metric after the outage", logged, found)
    assert not problems, problems
    assert (sweep_dir / "summary.json").is_file()
    assert json.loads((sweep_dir / "summary.json").read_text())["trials"] == 2
