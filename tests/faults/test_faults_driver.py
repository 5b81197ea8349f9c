"""The sweep driver SIGKILLed mid-sweep, then `--resume`: 0 lost, 0 duplicated trials and runs.

The sweep runs with credentials configured in its environment (an MLflow password, a Ray auth
token, a storage secret): afterwards none of them appears in the sweep's MLflow data (params,
tags, metric names, artifacts), its storage folder or its logs.
"""

import json
import secrets
import textwrap
from pathlib import Path

import optuna
import pytest

from tests.faults.fault_summary import record, record_counts
from tests.faults.sweep_harness import (
    checkpoints,
    kill_group,
    kill_ray_leftovers,
    start_sweep,
    sweep_env,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TRIALS = 5
SPACE = textwrap.dedent(f"""\
    name: faults-driver
    budget: {{num_samples: {TRIALS}, max_epochs: 3}}
    resources: {{cpus_per_trial: 1, workers_per_trial: 1}}
    asha: {{grace_period: 1, reduction_factor: 2}}
    sampler: {{seed: 1, n_startup_trials: 2}}
    strategies: {{A: {{}}, C: {{}}}}
    parameters:
      lora.rank: {{type: int, low: 4, high: 12}}
      optim.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
    points_to_evaluate:
      - {{lora.strategy: C, lora.rank: 8, optim.lr: 1.0e-3}}
    """)


def _leaks(data: bytes | str, secret_values: list[str]) -> list[str]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return [s for s in secret_values if s in text]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """One sweep: driver SIGKILLed once a trial ended and the next one checkpointed, then --resume.

    Runs with credentials configured in its environment. Yields what the two tests below check.
    """
    from tracking.server import MlflowServer

    tmp_path = tmp_path_factory.mktemp("faults-driver")
    server = MlflowServer(tmp_path / "mlflow")
    server.start(timeout=240)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = tmp_path / "store"
    sweep_dir = storage / "faults-driver"
    configured = {
        "MLFLOW_TRACKING_USERNAME": "sweeps",
        "MLFLOW_TRACKING_PASSWORD": "mlflow-pw-" + secrets.token_hex(12),
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "AWS_SECRET_ACCESS_KEY": "aws-" + secrets.token_hex(16),
    }
    env = sweep_env({"STANDIN_EPOCH_S": "2", "RAY_AUTH_MODE": "token", **configured})
    args = ["--space", str(space), "--storage-path", str(storage), "--tracking-uri", server.url,
            "--max-concurrent", "1"]
    logs = [tmp_path / "first.log", tmp_path / "resume.log"]
    try:
        driver = start_sweep(args, logs[0], env)
        try:
            wait_for(lambda: len({p.parent for p in checkpoints(sweep_dir)}) >= 2, 600, driver, logs[0])
        finally:
            kill_group(driver)
            kill_ray_leftovers(driver.pid)
        done_before = len({p.parent for p in checkpoints(sweep_dir)})
        resumed = start_sweep(args + ["--resume"], logs[1], env)
        try:
            resumed.wait(timeout=900)
        finally:
            if resumed.poll() is None:
                kill_group(resumed)
            kill_ray_leftovers(resumed.pid)
        yield {"url": server.url, "tmp": tmp_path, "storage": storage, "sweep_dir": sweep_dir,
               "logs": logs, "returncode": resumed.returncode, "done_before": done_before,
               "secrets": [v for k, v in configured.items() if k != "MLFLOW_TRACKING_USERNAME"]}
    finally:
        server.stop()


@pytest.mark.timeout(1200)
def test_killed_driver_resumes_without_loss_or_duplicates(killed_and_resumed):
    from tracking.runs import SweepTracker

    sweep = killed_and_resumed
    if sweep["returncode"] != 0:
        last = [line for line in sweep["logs"][1].read_text().splitlines() if line.strip()][-1:]
        record("faults", "sweep driver SIGKILL mid-sweep → --resume", False,
               f"--resume exited {sweep['returncode']}: {last[0][:120] if last else ''}")
    assert sweep["returncode"] == 0, sweep["logs"][1].read_text()[-4000:]

    tracker = SweepTracker(sweep["url"], "faults-driver", create=False)
    runs = tracker.trial_runs()
    trial_ids = [r.data.tags["ray.trial_id"] for r in runs]
    lost = TRIALS - len(set(trial_ids))
    duplicated = len(trial_ids) - len(set(trial_ids))
    parents = tracker._search("tags.`sweep.role` = 'parent'")
    study = optuna.load_study(study_name="faults-driver", storage=f"sqlite:///{sweep['sweep_dir'] / 'optuna.db'}")
    summary = json.loads((sweep["sweep_dir"] / "summary.json").read_text())
    # Trials that ran are COMPLETE or PRUNED; a proposal the killed driver made but Ray never recorded
    # never ran, and is told to Optuna as FAIL (so TPE ignores it).
    ran = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    never_ran = [t for t in study.trials if t not in ran]
    ok = (lost == 0 and duplicated == 0 and len(parents) == 1 and len(ran) == TRIALS
          and all(t.state.name == "FAIL" for t in never_ran) and summary["trials"] == TRIALS)
    record("faults", "sweep driver SIGKILL mid-sweep → --resume", ok,
           f"{sweep['done_before']} trials had checkpoints at the kill; lost {lost}, duplicated {duplicated}")
    assert lost == 0 and duplicated == 0, trial_ids
    assert len(parents) == 1
    assert all(r.data.tags.get("trial.status") in ("completed", "early_stopped") for r in runs)
    assert all(r.info.status != "RUNNING" for r in runs)
    assert len(ran) == TRIALS and all(t.state.name == "FAIL" for t in never_ran), [t.state for t in study.trials]
    assert summary["trials"] == TRIALS


@pytest.mark.timeout(600)
def test_no_configured_secret_in_mlflow_storage_or_logs(killed_and_resumed):
    """Whatever the resume did: no secret in the sweep's MLflow data, storage folder or logs."""
    from mlflow import MlflowClient

    sweep = killed_and_resumed
    client = MlflowClient(sweep["url"])
    experiment = client.get_experiment_by_name("faults-driver")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert runs, "the sweep logged nothing to scan"
    places = {}
    for run in runs:
        data = run.data
        places[f"run {run.info.run_id[:8]} params/tags/metric names"] = json.dumps(
            [data.params, data.tags, sorted(data.metrics)])
        local = Path(client.download_artifacts(run.info.run_id, "", str(sweep["tmp"] / "artifacts" / run.info.run_id)))
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            places[f"artifact {run.info.run_id[:8]}/{path.relative_to(local)}"] = path.read_bytes()
    for path in sorted(p for p in sweep["storage"].rglob("*") if p.is_file()):
        places[f"storage {path.relative_to(sweep['storage'])}"] = path.read_bytes()
    for log in sweep["logs"]:
        places[f"driver log {log.name}"] = log.read_text()
    leaks = {where: found for where, data in places.items() if (found := _leaks(data, sweep["secrets"]))}
    artifacts = sum(1 for w in places if w.startswith("artifact"))
    record_counts("leaks", "MLflow password, Ray token, S3 secret", len(places), len(places) - len(leaks),
                  f"{len(runs)} runs, {artifacts} artifacts, "
                  f"{sum(1 for w in places if w.startswith('storage'))} storage files, 2 driver logs")
    assert artifacts > 0 and not leaks, f"secrets found in: {sorted(leaks)}"
