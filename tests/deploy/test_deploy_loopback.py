"""Servers our code starts listen on 127.0.0.1 by default.

- `tracking.server.MlflowServer` (the embedded MLflow server): every listening socket of its
  process tree is on loopback.
- `sweeps.run.init_ray` in local mode: the dashboard and job API (HTTP) are on 127.0.0.1 and
  refuse requests without the token. Ray's own gRPC services (GCS, raylet, workers) listen on
  all interfaces whatever the dashboard host, so for those token auth is the guard: the test
  asserts it is on and prints the ports it saw.
"""

import json
import subprocess
import sys

import psutil
import pytest

LOOPBACK = {"127.0.0.1", "::1"}


def listening_sockets(pid: int) -> list[tuple[str, str, int]]:
    """(process name, ip, port) of every listening TCP socket of `pid` and its descendants."""
    found = []
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.name(), conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


@pytest.mark.timeout(300)
def test_embedded_mlflow_server_listens_on_loopback_only(tmp_path):
    from tracking.server import MlflowServer

    server = MlflowServer(tmp_path / "mlflow")
    try:
        url = server.start(timeout=240)
        assert url.startswith("http://127.0.0.1:")
        pid = json.loads(server.pid_file.read_text())["pid"]
        sockets = listening_sockets(pid)
        assert any(port == server.port for _, _, port in sockets), sockets
        exposed = [s for s in sockets if s[1] not in LOOPBACK]
        assert not exposed, f"MLflow server listens beyond loopback: {exposed}"
    finally:
        server.stop()


PROBE = r"""
import json, os, urllib.error, urllib.request
import ray
from ray._raylet import AuthenticationMode, get_authentication_mode
from sweeps.driver import init_ray
from tests.deploy.test_deploy_loopback import listening_sockets

os.environ.pop("RAY_ADDRESS", None)
context = init_ray(None)
dashboard = context.dashboard_url
try:
    urllib.request.urlopen(f"http://{dashboard}/api/jobs/", timeout=30)
    jobs_status = 200
except urllib.error.HTTPError as err:
    jobs_status = err.code
print(json.dumps({
    "dashboard": dashboard,
    "token_auth": get_authentication_mode() == AuthenticationMode.TOKEN,
    "jobs_without_token": jobs_status,
    "sockets": listening_sockets(os.getpid()),
}))
ray.shutdown()
"""


@pytest.mark.timeout(400)
def test_local_ray_of_the_sweep_serves_dashboard_on_loopback_with_token_auth(repo_root, tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RAY_AUTH")}
    env.pop("RAY_ADDRESS", None)
    env["HOME"] = str(tmp_path)  # a fresh ~/.ray: no token from another test or user
    env["PYTHONPATH"] = str(repo_root)
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            timeout=360, cwd=repo_root, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    host, port = seen["dashboard"].rsplit(":", 1)
    assert host == "127.0.0.1", seen["dashboard"]
    dashboard_sockets = [s for s in seen["sockets"] if s[2] == int(port)]
    assert dashboard_sockets and all(ip in LOOPBACK for _, ip, _ in dashboard_sockets), dashboard_sockets
    assert seen["token_auth"], "local Ray started without token auth"
    assert seen["jobs_without_token"] == 401
    beyond = sorted({(name, ip, p) for name, ip, p in seen["sockets"] if ip not in LOOPBACK})
    print(f"Ray gRPC listeners beyond loopback (token-guarded): {beyond}")
