"""`ray job` from the client host, and the job API as the test (the operator) reads it.

The client host holds only the Ray token (its ~/.ray/auth_token, copied from the head): no MLflow
or PostgreSQL credential. Every `ray job` command runs there; status and logs are read by this
pytest over the same HTTP API with the token (`Authorization: Bearer`), which costs no process.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import requests

from tests.cluster.netns import Host
from tests.cluster.ray_nodes import RayCluster, host_env, tool

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class JobClient:
    """`ray job ...` on the client host: with the token (its ~/.ray/auth_token in `home`, and
    RAY_AUTH_MODE=token, without which the Ray CLI sends no token), or with nothing (`home=None`)."""

    def __init__(self, host: Host, ray: RayCluster, home: Path | None):
        self.host, self.ray = host, ray
        self.env = host_env(home, {"RAY_AUTH_MODE": "token"}) if home else \
            host_env(ray.root / host.name / "home-without-token")
        Path(self.env["HOME"]).mkdir(parents=True, exist_ok=True)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.host.run([tool("ray"), "job", *args], env=self.env, timeout=timeout)

    def submit(self, submission_id: str, working_dir: Path, entrypoint: list[str], env_vars: dict,
               wait: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
        runtime_env = {"env_vars": env_vars}
        return self.cli("submit", "--address", self.ray.dashboard, "--submission-id", submission_id,
                        "--working-dir", str(working_dir), "--runtime-env-json", json.dumps(runtime_env),
                        *([] if wait else ["--no-wait"]), "--", *entrypoint, timeout=timeout)

    def stop(self, submission_id: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`ray job stop` (waits until the job has stopped)."""
        return self.cli("stop", "--address", self.ray.dashboard, submission_id, timeout=timeout)


def job_info(ray: RayCluster, submission_id: str) -> dict:
    answer = requests.get(f"{ray.dashboard}/api/jobs/{submission_id}", headers=ray.auth(), timeout=10)
    answer.raise_for_status()
    return answer.json()


def job_logs(ray: RayCluster, submission_id: str) -> str:
    answer = requests.get(f"{ray.dashboard}/api/jobs/{submission_id}/logs", headers=ray.auth(), timeout=30)
    answer.raise_for_status()
    return answer.json().get("logs", "")


def assert_running(ray: RayCluster, submission_id: str) -> None:
    info = job_info(ray, submission_id)
    if info["status"] in TERMINAL:
        raise AssertionError(f"job {submission_id} ended {info['status']}: {info.get('message')}\n"
                             + job_logs(ray, submission_id)[-4000:])


def wait_job(ray: RayCluster, submission_id: str, timeout: float, until=TERMINAL.__contains__) -> dict:
    """Poll the job until `until(status)`; fail with the log tail if it ends otherwise or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job_info(ray, submission_id)
        if until(info["status"]):
            return info
        assert_running(ray, submission_id)
        time.sleep(2)
    raise AssertionError(f"job {submission_id} still {job_info(ray, submission_id)['status']} after "
                         f"{timeout:.0f} s:\n" + job_logs(ray, submission_id)[-4000:])
