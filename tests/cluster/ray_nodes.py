"""Ray on the test hosts: a head with token authentication, worker nodes, and host loss.

    head     ray start --head --node-ip-address HEAD --port 6379 --dashboard-host HEAD (8265)
             --num-cpus 0: the job's driver runs here, no trial does
    worker   ray start --address HEAD:6379 --node-ip-address WORKER --num-cpus 1: one trial at a time

The token is generated once on the head (`ray get-auth-token --generate` → ~/.ray/auth_token) and
copied to every other host's ~/.ray/auth_token, as an operator would with scp. Each host has its
own HOME and Ray temp dir (sockets and logs are per host) on the shared filesystem.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import requests

from tests.cluster.netns import Host

RAY_PORT = 6379
DASHBOARD_PORT = 8265
OBJECT_STORE_BYTES = 200 * 2**20  # small: trials pass only checkpoint paths and metrics


def tool(name: str) -> str:
    """A console script of this virtual environment (ray, mlflow, python)."""
    return str(Path(sys.executable).with_name(name))


def host_env(home: Path, extra: dict | None = None) -> dict:
    """A clean environment for a process on a test host (nothing inherited from this pytest)."""
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(extra or {})}


def token_file(home: Path) -> Path:
    return home / ".ray" / "auth_token"


class RayCluster:
    """The head and the worker hosts of one test cluster.

    Args:
        head, workers: the hosts.
        root: per-host folders `<root>/<host>/{home,ray}` are made here.
        node_env: environment every Ray node starts with (trials and the driver inherit it), e.g.
            the MLflow account; `head_env` adds what only the head (the driver's host) gets.
    """

    def __init__(self, head: Host, workers: list[Host], root: Path, node_env: dict, head_env: dict):
        self.head, self.workers, self.root = head, list(workers), Path(root)
        self.node_env, self.head_env = dict(node_env), dict(head_env)
        self.dashboard = f"http://{head.ip}:{DASHBOARD_PORT}"
        self.token = ""

    def home(self, host: Host) -> Path:
        path = self.root / host.name / "home"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self, timeout: float = 300) -> None:
        generated = self.head.run([tool("ray"), "get-auth-token", "--generate"], env=host_env(self.home(self.head)))
        assert generated.returncode == 0, generated.stderr
        self.token = token_file(self.home(self.head)).read_text().strip()
        self._start_node(self.head, ["--head", f"--port={RAY_PORT}", f"--dashboard-host={self.head.ip}",
                                     f"--dashboard-port={DASHBOARD_PORT}", "--include-dashboard=true", "--num-cpus=0"],
                         self.head_env)
        self.wait_nodes({self.head.ip}, timeout)
        for worker in self.workers:
            self.start_worker(worker)
        self.wait_nodes({h.ip for h in (self.head, *self.workers)}, timeout)

    def start_worker(self, worker: Host) -> None:
        self.give_token(worker)
        self._start_node(worker, [f"--address={self.head.ip}:{RAY_PORT}", "--num-cpus=1"], {})

    def give_token(self, host: Host) -> Path:
        """Copy the head's token to `host`'s ~/.ray/auth_token (mode 0600); returns that HOME."""
        home = self.home(host)
        token_file(home).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(token_file(self.home(self.head)), token_file(home))
        token_file(home).chmod(0o600)
        return home

    def _start_node(self, host: Host, args: list[str], extra_env: dict) -> None:
        temp = self.root / host.name / "ray"
        shutil.rmtree(temp, ignore_errors=True)  # a restarted host starts a fresh Ray session
        env = host_env(self.home(host), {"RAY_AUTH_MODE": "token", **self.node_env, **extra_env})
        host.popen([tool("ray"), "start", "--block", f"--node-ip-address={host.ip}", f"--temp-dir={temp}",
                    f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats", *args],
                   self.root / host.name / "ray-start.log", env)

    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def nodes(self) -> list[dict]:
        """Every node the head knows: `{"node_ip": ..., "state": "ALIVE" | "DEAD", ...}`."""
        answer = requests.get(f"{self.dashboard}/api/v0/nodes", params={"limit": 100}, headers=self.auth(), timeout=10)
        answer.raise_for_status()
        return answer.json()["data"]["result"]["result"]

    def alive_ips(self) -> set[str]:
        try:
            return {n["node_ip"] for n in self.nodes() if n["state"] == "ALIVE"}
        except (requests.RequestException, KeyError, ValueError):
            return set()

    def wait_nodes(self, ips: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.alive_ips() >= ips:
                return
            time.sleep(1)
        logs = {h.name: (self.root / h.name / "ray-start.log") for h in (self.head, *self.workers)}
        tails = {name: log.read_text()[-1500:] for name, log in logs.items() if log.is_file()}
        raise AssertionError(f"Ray nodes {sorted(ips - self.alive_ips())} not alive after {timeout:.0f} s: {tails}")

    def lose_host(self, worker: Host, timeout: float = 120) -> list[int]:
        """Host loss: SIGKILL every process on `worker`; returns once the head has marked its node DEAD."""
        killed = worker.kill_all()
        deadline = time.monotonic() + timeout
        while worker.ip in self.alive_ips():
            assert time.monotonic() < deadline, f"the head still reports {worker.ip} alive after {timeout} s"
            time.sleep(1)
        return killed

    def ensure_workers(self, timeout: float = 300) -> None:
        """Restart any worker host whose Ray is gone (after a host-loss test)."""
        alive = self.alive_ips()
        for worker in self.workers:
            if worker.ip not in alive:
                worker.kill_all()
                self.start_worker(worker)
        self.wait_nodes({w.ip for w in self.workers}, timeout)
