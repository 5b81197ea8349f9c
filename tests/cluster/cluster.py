"""The whole test cluster: five hosts on a private subnet, the services, Ray, the client.

    services  PostgreSQL :5432, MLflow :5000 (basic auth; both stores in PostgreSQL)
    head      Ray head :6379 (GCS), :8265 (dashboard + job API); runs the submitted sweep driver
    worker1   Ray worker, 1 CPU: trials
    worker2   Ray worker, 1 CPU: trials
    client    `ray job submit` / `ray job stop` with the token, nothing else

Shared by all hosts, as an NFS mount would be: the checkout and its virtual environment, and
`<root>/shared` (the sweeps' `--storage-path`). Credentials, each only where it is needed: the Ray
token on every host (~/.ray/auth_token); the MLflow `sweeps` account in the Ray nodes' environment;
the `optuna` database password in the head's ~/.pgpass (the driver runs there).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tests.cluster.netns import TestNetwork, alive
from tests.cluster.ray_jobs import JobClient
from tests.cluster.ray_nodes import RayCluster
from tests.cluster.services import Services

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("services", "head", "worker1", "worker2", "client")
JOB_STOP_WAIT_S = 60  # how long `ray job stop` lets the driver wind down before SIGKILL (Ray: 3)


class Cluster:
    """Built by `start()` inside `with TestNetwork(HOSTS) as net`; `stop()` removes what it made."""

    def __init__(self, net: TestNetwork):
        self.net = net
        for stale in Path(tempfile.gettempdir()).glob("vgc-*-*"):  # left by a test process that died
            pid = stale.name.split("-")[1]
            if pid.isdigit() and not alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        self.root = Path(tempfile.mkdtemp(prefix=f"vgc-{os.getpid()}-"))  # short: Ray socket paths
        self.root.chmod(0o755)  # the postgres user works below it
        self.shared = self.root / "shared"
        self.shared.mkdir()
        self.services = Services(net["services"], self.root / "services")
        cache = os.environ.get("VGGT_LORA_CACHE") or str(Path.home() / ".cache" / "vggt-lora")
        self.ray = RayCluster(
            net["head"], [net["worker1"], net["worker2"]], self.root,
            node_env={**self.services.sweep_account_env(), "VGGT_LORA_CACHE": cache},
            head_env={"RAY_JOB_STOP_WAIT_TIME_S": str(JOB_STOP_WAIT_S)},
        )
        self.client = None
        self.anonymous = None

    def start(self) -> Cluster:
        self.services.start()
        pgpass = self.ray.home(self.net["head"]) / ".pgpass"  # libpq ignores one that others can read
        with os.fdopen(os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(self.services.pgpass_line())
        self.ray.start()
        self.services.wait_ready()
        self.client = JobClient(self.net["client"], self.ray, self.ray.give_token(self.net["client"]))
        self.anonymous = JobClient(self.net["client"], self.ray, None)
        return self

    def stop(self) -> None:
        # The Ray hosts first (disposable: no graceful stop), as they hold database connections.
        ray_hosts = [h for h in self.net.hosts.values() if h.name != "services"]
        for host in ray_hosts:
            host.signal_all(signal.SIGKILL)
        for host in ray_hosts:
            host.wait_gone(30)
        self.services.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @contextmanager
    def as_admin(self):
        """MLflow calls from this pytest as the admin (environment restored afterwards)."""
        names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        saved = {k: os.environ.get(k) for k in names}
        os.environ.update(dict(zip(names, self.services.admin())))
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
