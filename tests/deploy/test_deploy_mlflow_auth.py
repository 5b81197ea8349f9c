"""The compose stack's MLflow server, end to end: basic-auth, the sweep account, --allowed-hosts.

Runs docker/mlflow-entrypoint.sh itself — it writes the auth config, builds the server command and
execs `mlflow server --app-name basic-auth` — against a real PostgreSQL server (the session's
throwaway cluster, tests/plugins/postgres_fixtures.py) prepared as the compose `postgres` service
prepares it: a role owning the backend database, and docker/postgres-init.sh (run for real) creating
the user-store database. Both of MLflow's stores live there. MinIO cannot run here, so a small
`mlflow` shim first on PATH swaps only the artifact destination (s3:// → a tmp dir) and the listen
address (0.0.0.0:5000 → 127.0.0.1:free port), then execs the real `mlflow` with every other argument
as the entrypoint built it.
"""

import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.deploy.deploy_files import DOCKER_DIR

SHIM = r'''#!{python}
"""Test shim for `mlflow`: a tmp artifact folder and a loopback port instead of S3 and 0.0.0.0."""
import json, os, sys
args = sys.argv[1:]
with open(os.environ["SHIM_ARGV_LOG"], "w") as f:
    json.dump(args, f)
swap = {{"--host": "127.0.0.1", "--port": os.environ["SHIM_PORT"], "--workers": "1",
        "--artifacts-destination": os.environ["SHIM_TMP"] + "/artifacts"}}
args = [swap.get(args[i - 1], a) if i else a for i, a in enumerate(args)]
os.execv({mlflow!r}, [{mlflow!r}, *args])
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stack_env(tmp_path: Path, port: int, pg_host: str = "postgres", pg_port: int = 5432) -> dict[str, str]:
    """The mlflow service's environment as compose gives it (secrets and database names per test)."""
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    mlflow_exe = str(Path(sys.executable).with_name("mlflow"))
    (shim_dir / "mlflow").write_text(SHIM.format(python=sys.executable, mlflow=mlflow_exe))
    (shim_dir / "mlflow").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    tag = secrets.token_hex(3)
    return {
        "PATH": f"{shim_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(home),
        "SHIM_TMP": str(tmp_path),
        "SHIM_PORT": str(port),
        "SHIM_ARGV_LOG": str(tmp_path / "argv.json"),
        "POSTGRES_HOST": pg_host, "POSTGRES_PORT": str(pg_port), "POSTGRES_USER": f"mlflow_{tag}",
        # URL-special characters and a '%' (configparser interpolation) that the entrypoint must escape.
        "POSTGRES_PASSWORD": "pg/pass:w@rd %" + secrets.token_hex(4), "POSTGRES_DB": f"mlflow_{tag}",
        "MLFLOW_AUTH_DB": f"mlflow_auth_{tag}",
        "MLFLOW_S3_BUCKET": "mlflow-artifacts", "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000",
        "AWS_ACCESS_KEY_ID": "mlflow-minio", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(12),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-" + secrets.token_urlsafe(16),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_AUTH_DEFAULT_PERMISSION": "READ",
        "MLFLOW_EXTRA_ALLOWED_HOSTS": "mlflow.lan:5000",
        "MLFLOW_WORKERS": "2",
    }


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def _prepare_database(pg, env: dict) -> None:
    """What the compose `postgres` service does on its first start: the POSTGRES_USER role owning
    POSTGRES_DB, then docker/postgres-init.sh (for real) creating the user-store database."""
    pg.add_user(env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"], createdb=True)
    init = subprocess.run(
        ["sh", str(DOCKER_DIR / "postgres-init.sh")], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PGHOST": pg.host, "PGPORT": str(pg.port), "PGPASSWORD": env["POSTGRES_PASSWORD"],
             **{k: env[k] for k in ("POSTGRES_USER", "POSTGRES_DB", "MLFLOW_AUTH_DB")}})
    assert init.returncode == 0, init.stderr


@pytest.fixture
def auth_server(tmp_path, postgres_server):
    """docker/mlflow-entrypoint.sh running on a loopback port, stores in PostgreSQL; yields (url, env)."""
    port = _free_port()
    env = _stack_env(tmp_path, port, postgres_server.host, postgres_server.port)
    _prepare_database(postgres_server, env)
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", str(DOCKER_DIR / "mlflow-entrypoint.sh")], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url, env
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _create_sweep_user(url: str, env: dict, username: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DOCKER_DIR / "mlflow-create-user.py")],
        env={"PATH": env["PATH"], "HOME": env["HOME"], "MLFLOW_TRACKING_URI": url,
             "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": env["MLFLOW_AUTH_ADMIN_PASSWORD"],
             "MLFLOW_SWEEP_USERNAME": username, "MLFLOW_SWEEP_PASSWORD": password,
             "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_basic_auth_server_from_the_compose_entrypoint(auth_server, postgres_server, tmp_path, monkeypatch):
    url, env = auth_server
    pg = postgres_server
    admin = ("admin", env["MLFLOW_AUTH_ADMIN_PASSWORD"])

    # The entrypoint asked for exactly the compose stack's server.
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[0] == "server"
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    assert "--serve-artifacts" in argv
    assert argv[argv.index("--artifacts-destination") + 1] == "s3://mlflow-artifacts/"
    backend = argv[argv.index("--backend-store-uri") + 1]
    where = f"@{pg.host}:{pg.port}"
    assert backend == (f"postgresql://{env['POSTGRES_USER']}:pg%2Fpass%3Aw%40rd%20%25{env['POSTGRES_PASSWORD'][-8:]}"
                       f"{where}/{env['POSTGRES_DB']}")
    # The auth config is private to the server user, holds no admin password, and names the
    # user-store database with the same escaped credentials ('%' doubled for configparser).
    ini = Path(env["HOME"]) / "basic_auth.ini"
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] not in ini.read_text()
    auth_db_line = next(line for line in ini.read_text().splitlines() if line.startswith("database_uri"))
    auth_db_uri = backend.rsplit("/", 1)[0] + "/" + env["MLFLOW_AUTH_DB"]
    assert auth_db_line == "database_uri = " + auth_db_uri.replace("%", "%%")

    # mlflow-init: the sweep account, created by the admin; rerunning it is harmless.
    sweep_user, sweep_password = "sweeps", "sweep-" + secrets.token_urlsafe(16)
    first = _create_sweep_user(url, env, sweep_user, sweep_password)
    assert first.returncode == 0 and "created" in first.stdout, first.stderr
    again = _create_sweep_user(url, env, sweep_user, sweep_password)
    assert again.returncode == 0 and "exists" in again.stdout, again.stderr
    for output in (first, again):
        assert sweep_password not in output.stdout + output.stderr
        assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] not in output.stdout + output.stderr
    wrong_admin = _create_sweep_user(url, {**env, "MLFLOW_AUTH_ADMIN_PASSWORD": "not-the-admin-password"},
                                     "other", "other-" + secrets.token_urlsafe(16))
    assert wrong_admin.returncode == 1, wrong_admin.stderr
    assert wrong_admin.stderr.splitlines()[0].startswith("error: UNAUTHENTICATED"), wrong_admin.stderr

    # A sweep logs with the credentials from its environment, as the Ray services do.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", sweep_user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", sweep_password)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(url)
    experiment_id = client.create_experiment("deploy-auth")
    run = client.create_run(experiment_id, tags={"sweep.role": "trial"})
    client.log_param(run.info.run_id, "lora.rank", "8")
    client.log_metric(run.info.run_id, "val/abs_rel", 0.125, step=1)
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    client.log_artifact(run.info.run_id, str(tmp_path / "adapter_config.json"), "adapter")
    client.set_terminated(run.info.run_id)

    # The admin sees it (REST, basic auth), artifact proxied through the server.
    got = requests.get(f"{url}/api/2.0/mlflow/runs/get", params={"run_id": run.info.run_id}, auth=admin, timeout=30)
    assert got.status_code == 200
    data = got.json()["run"]["data"]
    assert {"key": "lora.rank", "value": "8"} in data["params"]
    assert [m["value"] for m in data["metrics"] if m["key"] == "val/abs_rel"] == [0.125]
    artifact = f"{url}/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run.info.run_id}/artifacts/adapter/adapter_config.json"
    assert requests.get(artifact, auth=admin, timeout=30).text == '{"r": 8}'

    # Refused without credentials, with a wrong password, and for the artifact too.
    search = f"{url}/api/2.0/mlflow/experiments/search"
    assert requests.get(search, params={"max_results": 1}, timeout=30).status_code == 401
    assert requests.get(search, params={"max_results": 1}, auth=(sweep_user, "wrong-password-123"), timeout=30).status_code == 401
    assert requests.get(artifact, timeout=30).status_code == 401
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(MlflowException, match="401|not authenticated|Unauthorized"):
        MlflowClient(url).create_experiment("anonymous-attempt")

    # The sweep account is not an admin: it cannot create users.
    created = requests.post(f"{url}/api/2.0/mlflow/users/create", auth=(sweep_user, sweep_password),
                            json={"username": "mallory", "password": "mallory-" + secrets.token_hex(8)}, timeout=30)
    assert created.status_code == 403

    # Both stores are the PostgreSQL databases: the run in the backend store, the accounts in the user store.
    assert pg.sql(f"SELECT name FROM experiments WHERE experiment_id = {int(experiment_id)}",
                  env["POSTGRES_DB"]) == "deploy-auth"
    assert pg.sql("SELECT count(*) FROM metrics WHERE key = 'val/abs_rel'", env["POSTGRES_DB"]) == "1"
    assert set(pg.sql("SELECT username FROM users", env["MLFLOW_AUTH_DB"]).split()) == {"admin", sweep_user}

    # --allowed-hosts: the compose service name and the configured extra name pass, others do not.
    for host, expected in (("mlflow:5000", 200), ("mlflow.lan:5000", 200), ("127.0.0.1:5000", 200),
                           ("attacker.example:5000", 403), ("10.0.0.7:5000", 403)):
        answer = requests.get(search, params={"max_results": 1}, auth=admin, headers={"Host": host}, timeout=30)
        assert answer.status_code == expected, (host, answer.status_code, answer.text[:200])


def test_entrypoint_refuses_placeholder_or_missing_secrets(tmp_path):
    env = _stack_env(tmp_path, _free_port())
    for name, value in (("MLFLOW_AUTH_ADMIN_PASSWORD", "change-me-mlflow-admin-password"),
                        ("MLFLOW_FLASK_SERVER_SECRET_KEY", ""), ("POSTGRES_PASSWORD", None)):
        broken = {k: v for k, v in env.items() if k != name}
        if value is not None:
            broken[name] = value
        result = subprocess.run(["bash", str(DOCKER_DIR / "mlflow-entrypoint.sh")], env=broken,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [f"error: {name} is not set (copy docker/.env.example to docker/.env and set it)"]
        assert not (tmp_path / "argv.json").exists(), "mlflow was started anyway"
