"""Server lifecycle without paying for extra server starts: reuse via the pid file, the embedded
default, bad CLI input, stale pid files. (Stop/restart of a real server: test_tracking_outage.py.)"""

import json
import subprocess
import sys

import pytest

from tracking.errors import TrackingError
from tracking.server import MlflowServer, is_healthy, resolve_tracking_uri


def test_session_server_is_healthy_and_recorded(mlflow_server, mlflow_server_handle):
    assert mlflow_server.startswith("http://127.0.0.1:")
    assert is_healthy(mlflow_server)
    record = json.loads(mlflow_server_handle.pid_file.read_text())
    assert record["url"] == mlflow_server and record["backend_store_uri"].startswith("sqlite:///")


def test_start_reuses_the_running_server(mlflow_server, mlflow_server_handle):
    again = MlflowServer(mlflow_server_handle.data_dir)
    assert again.start(timeout=5) == mlflow_server


def test_resolve_tracking_uri_order(mlflow_server, mlflow_server_handle, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.1.2.3:5000")
    assert resolve_tracking_uri("http://127.0.0.1:1234/") == "http://127.0.0.1:1234"
    assert resolve_tracking_uri() == "http://10.1.2.3:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    # No URI anywhere: the embedded server recorded in the data dir (here: already running).
    assert resolve_tracking_uri(data_dir=mlflow_server_handle.data_dir) == mlflow_server
    monkeypatch.setenv("VGGT_MLFLOW_DIR", str(mlflow_server_handle.data_dir))
    assert resolve_tracking_uri() == mlflow_server  # found through the variable, not the cwd
    monkeypatch.chdir(mlflow_server_handle.data_dir)
    with pytest.raises(TrackingError, match="not an MLflow server address"):
        resolve_tracking_uri("localhost:5000")


def test_port_in_use_is_a_user_error(mlflow_server_handle, tmp_path):
    with pytest.raises(TrackingError, match=f"port {mlflow_server_handle.port} .* already in use"):
        MlflowServer(tmp_path / "other", port=mlflow_server_handle.port).start()


def test_stale_pid_file_is_ignored(tmp_path):
    server = MlflowServer(tmp_path)
    server.pid_file.write_text(json.dumps({"pid": 2 ** 22 + 7, "port": 1, "host": "127.0.0.1",
                                           "url": "http://127.0.0.1:1"}))
    assert server.running_record() is None
    assert not server.pid_file.exists()
    server.stop()  # nothing recorded: a no-op


@pytest.mark.parametrize("args, message", [
    (["start", "--port", "70000"], "--port 70000 is not a TCP port (1-65535)"),
    (["start", "--workers", "0"], "--workers 0 must be at least 1"),
])
def test_cli_bad_input_exits_2_with_one_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tracking.server", *args, "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {message}"


def test_cli_status_of_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tracking.server", "status", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "not running" in proc.stdout
