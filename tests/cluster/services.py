"""The services host: PostgreSQL and MLflow (basic auth), both bound to the host's own address.

    PostgreSQL  SERVICES:5432   databases mlflow + mlflow_auth (role mlflow), optuna (role optuna)
    MLflow      SERVICES:5000   mlflow server --app-name basic-auth: backend store and user store
                                in PostgreSQL, artifacts served from a folder of this host

No password appears in a URL or on a command line: the MLflow server gets the `mlflow` role's
password in PGPASSWORD, the sweep driver's host gets the `optuna` role's in a ~/.pgpass line (see
`pgpass_line`), and the trials' hosts get the MLflow `sweeps` account in MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD. The admin account only creates that account.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import requests

from tests.cluster.netns import Host
from tests.cluster.ray_nodes import host_env, tool
from tests.plugins.postgres_fixtures import PostgresServer

PG_PORT = 5432
MLFLOW_PORT = 5000


class Services:
    """`start()`, `wait_ready()`; the processes end with the host, `stop()` removes the data."""

    def __init__(self, host: Host, root: Path):
        self.host, self.root = host, Path(root)
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)  # the postgres user works below it
        self.postgres = PostgresServer(host.ip, PG_PORT, wrap=tuple(host.command([])), parent=self.root)
        self.passwords = {role: secrets.token_urlsafe(18) for role in ("mlflow", "optuna", "admin", "sweeps")}
        self.mlflow_url = f"http://{host.ip}:{MLFLOW_PORT}"
        self.optuna_url = f"postgresql://optuna@{host.ip}:{PG_PORT}/optuna"  # no password: see pgpass_line

    def start(self) -> None:
        """PostgreSQL (ready on return) and the MLflow server (starting; see `wait_ready`)."""
        self.postgres.start()
        self.postgres.add_user("mlflow", self.passwords["mlflow"], "mlflow", "mlflow_auth")
        self.postgres.add_user("optuna", self.passwords["optuna"], "optuna")
        home = self.root / "mlflow-home"
        home.mkdir(parents=True, exist_ok=True)
        ini = home / "basic_auth.ini"
        ini.write_text("[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = postgresql://mlflow@{self.host.ip}:{PG_PORT}/mlflow_auth\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        ini.chmod(0o600)
        env = host_env(home, {
            "PGPASSWORD": self.passwords["mlflow"], "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": self.passwords["admin"],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        })
        self.log = self.root / "mlflow-server.log"
        self.host.popen([tool("python"), "-m", "mlflow", "server", "--app-name", "basic-auth",
                         "--host", self.host.ip, "--port", str(MLFLOW_PORT), "--workers", "1",
                         "--backend-store-uri", f"postgresql://mlflow@{self.host.ip}:{PG_PORT}/mlflow",
                         "--artifacts-destination", str(self.root / "mlflow-artifacts"),
                         "--allowed-hosts", f"{self.host.ip}:{MLFLOW_PORT}"], self.log, env)

    def wait_ready(self, timeout: float = 300) -> None:
        """MLflow answers; the `sweeps` account is created (by the admin)."""
        self._wait_healthy(timeout)
        created = requests.post(f"{self.mlflow_url}/api/2.0/mlflow/users/create", auth=self.admin(), timeout=30,
                                json={"username": "sweeps", "password": self.passwords["sweeps"]})
        assert created.status_code == 200, created.text

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.mlflow_url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise AssertionError(f"MLflow on {self.mlflow_url} not healthy after {timeout:.0f} s:\n"
                             + self.log.read_text()[-3000:])

    def admin(self) -> tuple[str, str]:
        return "admin", self.passwords["admin"]

    def sweep_account_env(self) -> dict:
        """The MLflow account every Ray node (driver and trials) logs with."""
        return {"MLFLOW_TRACKING_USERNAME": "sweeps", "MLFLOW_TRACKING_PASSWORD": self.passwords["sweeps"]}

    def pgpass_line(self) -> str:
        """The ~/.pgpass line that lets the sweep driver's host open the Optuna database."""
        return f"{self.host.ip}:{PG_PORT}:optuna:optuna:{self.passwords['optuna']}\n"

    def optuna_storage(self):
        """The Optuna storage as the operator (this pytest) opens it; the password travels in the
        connection arguments, not in the URL."""
        import optuna

        return optuna.storages.RDBStorage(self.optuna_url,
                                          engine_kwargs={"connect_args": {"password": self.passwords["optuna"]}})

    def stop(self) -> None:
        self.postgres.stop()
