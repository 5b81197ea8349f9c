"""`ray job submit` of a sweep to a `ray start --head` cluster with token auth (Ray 2.60)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tracking.runs import SweepTracker

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SPACE = textwrap.dedent("""\
    name: cluster-sweep
    budget: {num_samples: 2, max_epochs: 2}
    resources: {cpus_per_trial: 1, workers_per_trial: 1}
    asha: {grace_period: 1, reduction_factor: 2}
    strategies: {B: {}, C: {}}
    parameters:
      lora.rank: {type: int, low: 4, high: 8}
      optim.lr: {type: float, low: 1e-4, high: 1e-2, log: true}
    """)


@pytest.mark.slow
def test_job_submit_with_token_auth(sweep_mlflow, sweep_env):
    ray_bin = str(Path(sys.executable).with_name("ray"))
    home = Path(tempfile.mkdtemp(prefix="/tmp/rayc-"))  # short: Ray's socket paths have a length limit
    # The cluster's `python` must be the one with the project's dependencies, as on a real cluster.
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token",
           "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",
           "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    token = subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, capture_output=True,
                           text=True, check=True).stdout.strip().splitlines()[-1]
    assert (home / ".ray" / "auth_token").is_file() and token
    port, dash = free_port(), free_port()
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         f"--temp-dir={home / 'tmp'}", "--include-dashboard=true"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 180
        while time.time() < deadline:
            status = subprocess.run([ray_bin, "job", "list", "--address", address], env=env,
                                    capture_output=True, text=True)
            if status.returncode == 0:
                break
            assert head.poll() is None, head.stdout.read()[-3000:]
            time.sleep(2)
        else:
            pytest.fail("the Ray head's job API did not come up")

        work = home / "work"
        shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "*.egg-info", "__pycache__"))
        (work / "space.yaml").write_text(SPACE)
        storage = home / "store"
        entry = ["python", "tests/sweeps/standin_sweep.py", "--space", "space.yaml", "--tracking-uri",
                 sweep_mlflow, "--storage-path", str(storage)]

        # Without the token the job API refuses the client.
        no_token = {**env, "HOME": str(home / "nohome")}
        refused = subprocess.run([ray_bin, "job", "submit", "--address", address, "--working-dir", str(work),
                                  "--", *entry], env=no_token, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0

        submit_env = {**env, "RAY_AUTH_TOKEN": token}
        job = subprocess.run([ray_bin, "job", "submit", "--address", address, "--working-dir", str(work),
                              "--", *entry], env=submit_env, capture_output=True, text=True, timeout=900)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
        assert "succeeded" in job.stdout.lower()
        runs = SweepTracker(sweep_mlflow, "cluster-sweep", create=False).trial_runs()
        assert len(runs) == 2 and all(r.info.status != "RUNNING" for r in runs)
        assert (storage / "cluster-sweep" / "leaderboard.md").is_file()
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # only this cluster: `ray stop` would hit every Ray on the box
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)
