"""Sweeps across hosts: submitted with `ray job submit` from a client host to a Ray cluster of a head
and two workers on a private network, tracked in MLflow and Optuna on PostgreSQL on a services host
(tests/cluster/cluster.py). The trainer is the training stand-in of tests/sweeps/standin_sweep.py.

    token         the job API refuses a client without the Ray token; every server binds its host
    both hosts    trials run on both workers; each trial's run records its host (`ray.node_ip`)
    network cut   worker1 ↔ services silent for 30 s while worker1 trains: nothing lost
    driver loss   `ray job stop` mid-sweep, resubmitted with --resume (Optuna on PostgreSQL, which
                  optuna-dashboard then shows)
    host loss     every process of worker2 SIGKILLed mid-trial: the trial resumes on worker1

Each sweep ends with exactly one MLflow run per trial and every epoch logged once; the counts go to
the fault summary (tests/faults/SUMMARY.md).
"""

import os
import signal
import textwrap
import time

import pytest
import requests

from tests.cluster.cluster import JOB_STOP_WAIT_S, REPO
from tests.cluster.ray_jobs import assert_running, job_info, job_logs, wait_job
from tests.cluster.ray_nodes import host_env, tool
from tests.cluster.sweep_checks import epoch_rows, tally
from tests.faults.fault_summary import record, record_counts

pytestmark = [pytest.mark.slow, pytest.mark.faults]

EPOCH_S = 1  # the stand-in's seconds per epoch
CUT_S = 30
SPACE = textwrap.dedent("""\
    name: {name}
    budget: {{num_samples: {trials}, max_epochs: {epochs}}}
    resources: {{cpus_per_trial: 1, workers_per_trial: 1}}
    asha: {{grace_period: {epochs}, reduction_factor: 2}}
    sampler: {{seed: 0, n_startup_trials: 2{storage}}}
    failure: {{max_failures: 2}}
    strategies: {{A: {{}}, C: {{}}}}
    parameters:
      lora.rank: {{type: int, low: 4, high: 12}}
      optim.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
    """)


def submit_sweep(cluster, name: str, trials: int, epochs: int, submission_id: str, *, storage_in_space: bool,
                 resume: bool = False) -> str:
    """`ray job submit` of the stand-in sweep from the client host; the study lives in PostgreSQL,
    named by the space file's `sampler.storage` or by `--optuna-storage`."""
    space = cluster.shared / f"{name}.yaml"
    storage = f", storage: '{cluster.services.optuna_url}'" if storage_in_space else ""
    space.write_text(SPACE.format(name=name, trials=trials, epochs=epochs, storage=storage))
    entrypoint = ["python", "tests/sweeps/standin_sweep.py", "--space", str(space),
                  "--tracking-uri", cluster.services.mlflow_url, "--storage-path", str(cluster.shared / "sweeps"),
                  "--interrupt-grace", "15"]
    if not storage_in_space:
        entrypoint += ["--optuna-storage", cluster.services.optuna_url]
    if resume:
        entrypoint.append("--resume")
    submitted = cluster.client.submit(submission_id, REPO, entrypoint, {"STANDIN_EPOCH_S": str(EPOCH_S)})
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    return submission_id


def poll(predicate, timeout: float, cluster, submission_id: str):
    """Wait for `predicate()` while the job runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert_running(cluster.ray, submission_id)
        time.sleep(1)
    raise AssertionError(f"timed out; job log:\n{job_logs(cluster.ray, submission_id)[-4000:]}")


def tracker(name: str, cluster):
    from tracking.runs import SweepTracker

    return SweepTracker(cluster.services.mlflow_url, name, create=False)


def record_sweep(case: str, counts, fault_ok: bool, fault_detail: str) -> None:
    record("faults", case, fault_ok, fault_detail)
    record_counts("runs", case, counts.trials, counts.runs_once, counts.detail())
    record_counts("metrics", f"every epoch/step metric: {case}", counts.metrics_logged, counts.metrics_found)


@pytest.mark.timeout(300)
def test_servers_bind_their_host_and_the_job_api_needs_the_token(cluster):
    net = cluster.net
    services, head = net["services"], net["head"]
    assert services.listening() == [f"{services.ip}:5000", f"{services.ip}:5432"]
    assert f"{head.ip}:8265" in head.listening() and not any(a.endswith(":8265") and a != f"{head.ip}:8265"
                                                               for a in head.listening())
    assert net["client"].listening() == []
    # The job API, over the network: refused without the token, answered with it.
    jobs = f"{cluster.ray.dashboard}/api/jobs/"
    assert requests.get(jobs, timeout=10).status_code == 401
    assert requests.get(jobs, headers={"Authorization": "Bearer not-the-token"}, timeout=10).status_code in (401, 403)
    assert requests.get(jobs, headers=cluster.ray.auth(), timeout=10).status_code == 200
    # `ray job submit` from the client host without the token is refused; nothing starts.
    refused = cluster.anonymous.submit("no-token", REPO, ["python", "-c", "print(1)"], {})
    assert refused.returncode != 0
    assert "Unauthorized: Missing authentication token" in refused.stdout + refused.stderr  # the head's answer
    assert requests.get(f"{jobs}no-token", headers=cluster.ray.auth(), timeout=10).status_code == 404


@pytest.fixture(scope="module")
def cut_sweep(cluster):
    """2 trials at once, one per worker; worker1 ↔ services cut for 30 s mid-training."""
    name, sid = "cluster-cut", "cluster-cut-1"
    worker1, services = cluster.net["worker1"], cluster.net["services"]
    sweep_dir = cluster.shared / "sweeps" / name
    started = time.monotonic()
    submit_sweep(cluster, name, trials=2, epochs=10, submission_id=sid, storage_in_space=True)
    poll(lambda: any(r["node_ip"] == worker1.ip for rows in epoch_rows(sweep_dir).values() for r in rows),
         600, cluster, sid)
    cut_at = time.time()
    cluster.net.cut(worker1, services)
    try:
        time.sleep(CUT_S)
    finally:
        cluster.net.restore(worker1, services)
    restored_at = time.time()
    wait_job(cluster.ray, sid, 900, until=lambda status: status == "SUCCEEDED")
    with cluster.as_admin():
        sweep_tracker = tracker(name, cluster)
        counts = tally(sweep_tracker, sweep_dir)
        runs = sweep_tracker.trial_runs()
    during = [r for rows in counts.epochs.values() for r in rows
              if r["node_ip"] == worker1.ip and cut_at <= r["timestamp"] <= restored_at]
    print(f"cluster sweep with a {CUT_S} s cut: {time.monotonic() - started:.0f} s, "
          f"{len(during)} epochs trained on worker1 while cut")
    return {"counts": counts, "runs": runs, "during": during, "trials": 2, "log": job_logs(cluster.ray, sid)}


def test_trials_run_on_both_worker_hosts(cluster, cut_sweep):
    workers = {cluster.net["worker1"].ip, cluster.net["worker2"].ip}
    runs = cut_sweep["runs"]
    assert len(runs) == cut_sweep["trials"], cut_sweep["log"][-3000:]
    assert {r.data.tags.get("ray.node_ip") for r in runs} == workers  # set by each trial on its host
    assert {row["node_ip"] for rows in cut_sweep["counts"].epochs.values() for row in rows} == workers
    assert all(r.data.tags.get("trial.status") == "completed" and r.info.status == "FINISHED" for r in runs)


def test_network_cut_to_the_services_host_loses_no_metric(cut_sweep):
    counts, during = cut_sweep["counts"], cut_sweep["during"]
    ok = not counts.problems and counts.lost == 0 and counts.duplicated == 0 and len(during) >= 3
    problem = f"; {counts.problems[0]}" if counts.problems else ""
    record_sweep(f"worker1 ↔ services link cut {CUT_S} s during training", counts, ok,
                 f"{len(during)} epochs trained on worker1 while cut{problem}")
    assert len(during) >= 3, "the cut did not overlap training on worker1"
    assert counts.trials == cut_sweep["trials"] and counts.lost == 0 and counts.duplicated == 0, \
        cut_sweep["log"][-3000:]
    assert not counts.problems and counts.metrics_found == counts.metrics_logged > 0, counts.problems


@pytest.mark.timeout(1200)
def test_driver_loss_ray_job_stop_then_resume_loses_no_trial(cluster):
    """`ray job stop` mid-sweep (SIGTERM to the driver; Ray SIGKILLs it after RAY_JOB_STOP_WAIT_TIME_S),
    then the same sweep submitted with --resume: the study continues in PostgreSQL."""
    import optuna

    cluster.ray.ensure_workers()
    name, trials, epochs = "cluster-driver", 3, 3
    sweep_dir = cluster.shared / "sweeps" / name
    started = time.monotonic()
    first = submit_sweep(cluster, name, trials, epochs, "cluster-driver-1", storage_in_space=False)
    poll(lambda: any(len(rows) == epochs for rows in epoch_rows(sweep_dir).values()), 600, cluster, first)
    stopped = cluster.client.stop(first, timeout=JOB_STOP_WAIT_S + 120)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert job_info(cluster.ray, first)["status"] == "STOPPED"
    log = job_logs(cluster.ray, first)
    graceful = "interrupted (SIGTERM)" in log and "resume with:" in log  # the driver's own ending
    done_before = sum(1 for rows in epoch_rows(sweep_dir).values() if len(rows) == epochs)

    second = submit_sweep(cluster, name, trials, epochs, "cluster-driver-2", storage_in_space=False, resume=True)
    wait_job(cluster.ray, second, 900, until=lambda status: status == "SUCCEEDED")
    with cluster.as_admin():
        sweep_tracker = tracker(name, cluster)
        counts = tally(sweep_tracker, sweep_dir)
        parents = sweep_tracker._search("tags.`sweep.role` = 'parent'")
        runs = sweep_tracker.trial_runs()
    storage = cluster.services.optuna_storage()
    study = optuna.load_study(study_name=name, storage=storage)
    states = [t.state.name for t in study.trials]
    storage.engine.dispose()
    dashboard_trials = trials_in_optuna_dashboard(cluster, name)
    ran = sum(s in ("COMPLETE", "PRUNED") for s in states)
    print(f"driver loss: {time.monotonic() - started:.0f} s; graceful stop: {graceful}; "
          f"{done_before} trials done at the stop; study {states}")
    ok = (counts.lost == 0 and counts.duplicated == 0 and not counts.problems and len(parents) == 1
          and ran == trials and all(s in ("COMPLETE", "PRUNED", "FAIL") for s in states))
    record_sweep("sweep job stopped (ray job stop) → resubmitted with --resume", counts, ok,
                 f"{done_before} of {trials} trials done at the stop; driver ended "
                 f"{'cleanly (SIGTERM)' if graceful else 'by SIGKILL'}; Optuna study on PostgreSQL")
    assert graceful, log[-3000:]
    assert done_before < trials, "the sweep ended before the stop: nothing left to resume"
    assert counts.trials == trials and counts.lost == 0 and counts.duplicated == 0, counts
    assert not counts.problems and counts.metrics_found == counts.metrics_logged
    assert len(parents) == 1 and len(runs) == trials
    assert all(r.data.tags.get("trial.status") == "completed" and r.info.status == "FINISHED" for r in runs)
    assert ran == trials and all(s in ("COMPLETE", "PRUNED", "FAIL") for s in states), states
    assert not (sweep_dir / "optuna.db").exists()  # the study lives in PostgreSQL only
    assert dashboard_trials == len(states)  # optuna-dashboard shows the same study


def trials_in_optuna_dashboard(cluster, study_name: str) -> int:
    """`optuna-dashboard postgresql://optuna@SERVICES:5432/optuna` on the head host (its ~/.pgpass
    has the password), as the README shows; returns the trials it lists for the study."""
    head = cluster.net["head"]
    url = f"http://{head.ip}:8080"
    dashboard = head.popen([tool("optuna-dashboard"), cluster.services.optuna_url, "--host", head.ip, "--port", "8080",
                            "--quiet"], cluster.root / "optuna-dashboard.log", host_env(cluster.ray.home(head)))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                studies = requests.get(f"{url}/api/studies", timeout=5).json()["study_summaries"]
                break
            except (requests.RequestException, ValueError):
                assert dashboard.poll() is None and time.monotonic() < deadline, \
                    (cluster.root / "optuna-dashboard.log").read_text()[-2000:]
                time.sleep(1)
        study_id = next(s["study_id"] for s in studies if s["study_name"] == study_name)
        return len(requests.get(f"{url}/api/studies/{study_id}", params={"after": 0}, timeout=30).json()["trials"])
    finally:
        os.killpg(dashboard.pid, signal.SIGTERM)
        dashboard.wait(timeout=30)


@pytest.mark.timeout(1200)
def test_host_loss_resumes_the_trial_on_the_other_worker(cluster):
    """Every process of worker2 SIGKILLed mid-trial: the head marks the node dead, Tune retries the
    trial from its last checkpoint on worker1, the sweep completes."""
    cluster.ray.ensure_workers()
    worker1, worker2 = cluster.net["worker1"], cluster.net["worker2"]
    name, trials, epochs = "cluster-hostloss", 2, 4
    sweep_dir = cluster.shared / "sweeps" / name
    started = time.monotonic()
    sid = submit_sweep(cluster, name, trials, epochs, "cluster-hostloss-1", storage_in_space=False)

    def victim():
        return next((t for t, rows in epoch_rows(sweep_dir).items()
                     if len(rows) >= 2 and rows[-1]["node_ip"] == worker2.ip and len(rows) < epochs), None)

    trial_id = poll(victim, 600, cluster, sid)
    time.sleep(EPOCH_S / 2)  # mid-epoch
    killed = cluster.ray.lose_host(worker2)
    wait_job(cluster.ray, sid, 900, until=lambda status: status == "SUCCEEDED")
    with cluster.as_admin():
        sweep_tracker = tracker(name, cluster)
        counts = tally(sweep_tracker, sweep_dir)
        runs = sweep_tracker.trial_runs()
    rows = counts.epochs[trial_id]
    hosts = [row["node_ip"] for row in rows]
    before = hosts.count(worker2.ip)  # epochs done (and checkpointed) on worker2 before the loss
    moved = 0 < before < epochs and hosts == [worker2.ip] * before + [worker1.ip] * (epochs - before)
    resumed_at = moved and rows[before]["iterations_since_restore"] == 1  # a fresh attempt, from epoch `before`
    print(f"host loss: {time.monotonic() - started:.0f} s; {len(killed)} processes killed on worker2 after "
          f"epoch {before} of trial {trial_id}; epochs by host {hosts}")
    ok = (moved and resumed_at and [r["training_iteration"] for r in rows] == list(range(1, epochs + 1))
          and counts.lost == 0 and counts.duplicated == 0 and not counts.problems)
    record_sweep("worker host lost mid-trial (every process SIGKILLed)", counts, ok,
                 f"{len(killed)} processes killed on worker2 after epoch {before}; trial resumed on worker1 "
                 f"at epoch {before + 1}")
    assert [r["training_iteration"] for r in rows] == list(range(1, epochs + 1)), rows
    assert moved and resumed_at, hosts  # no epoch redone: resumed from the last checkpoint, elsewhere
    assert counts.trials == trials and counts.lost == 0 and counts.duplicated == 0, counts
    assert not counts.problems and counts.metrics_found == counts.metrics_logged
    assert all(r.data.tags.get("trial.status") == "completed" for r in runs)
    assert {r.data.tags.get("ray.node_ip") for r in runs} == {worker1.ip}  # the last host of each trial
