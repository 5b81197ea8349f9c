"""A real `mlflow server` as a managed subprocess: start, reuse, stop, and the embedded default.

CLI:
    python -m tracking.server start  [--port N] [--data-dir D] [--backend-store-uri URI]
                                     [--artifacts-destination URI] [--host 127.0.0.1]
    python -m tracking.server status [--data-dir D]
    python -m tracking.server stop   [--data-dir D]

The server runs in its own process group, detached from the caller, and is recorded in
`<data_dir>/server.pid` (JSON: pid, url, stores, log path) so a later call (another sweep, the
`status`/`stop` commands) finds and reuses it. Defaults: sqlite backend `<data_dir>/mlflow.db`,
proxied artifacts under `<data_dir>/artifacts`, bound to 127.0.0.1 on a free port.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tracking.errors import ArgumentParser, TrackingError, cli_main
from vggt_common.files import atomic_write, file_lock

PID_FILE = "server.pid"
LOG_FILE = "server.log"
DEFAULT_DIR_NAME = ".mlflow-server"


class MlflowServer:
    """One `mlflow server` process whose state lives in `data_dir`.

    Args:
        data_dir: holds the pid file, the log and (by default) the sqlite DB and artifacts.
        port: TCP port; None picks a free one (or reuses the recorded server's port).
        host: bind address; loopback by default.
        backend_store_uri: e.g. `postgresql://user:pw@db/mlflow`; default sqlite in `data_dir`.
        artifacts_destination: e.g. `s3://bucket/mlflow`; default `<data_dir>/artifacts`.
        extra_args: more `mlflow server` flags, e.g. `("--allowed-hosts", "mlflow-head:5000")`.
        workers: uvicorn workers (1 keeps a local server light; raise it for a shared server).
    """

    def __init__(self, data_dir, port=None, host="127.0.0.1", backend_store_uri=None,
                 artifacts_destination=None, extra_args=(), workers=1):
        self.data_dir = Path(data_dir).expanduser().resolve()
        if port is not None and not 0 < int(port) < 65536:
            raise TrackingError(f"--port {port} is not a TCP port (1-65535)")
        self.port = int(port) if port is not None else None
        self.host = host
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.data_dir / 'mlflow.db'}"
        self.artifacts_destination = artifacts_destination or str(self.data_dir / "artifacts")
        self.extra_args = tuple(extra_args)
        self.workers = int(workers)
        self.pid_file = self.data_dir / PID_FILE
        self.log_file = self.data_dir / LOG_FILE

    @property
    def url(self) -> str:
        if self.port is None:
            raise TrackingError(f"the MLflow server in {self.data_dir} has no port yet; call start() first")
        return f"http://{_url_host(_connect_host(self.host))}:{self.port}"

    def start(self, timeout: float = 60) -> str:
        """Start the server (or reuse the one recorded in the pid file); return its URI.

        A file lock on the data dir makes concurrent callers (two sweeps starting at once) share
        one server instead of racing to start two.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.data_dir / "server.lock"):
            record = _read_json(self.pid_file)
            if record and _is_mlflow_server(record.get("pid")):
                if self.port is not None and record["port"] != self.port:
                    raise TrackingError(
                        f"an MLflow server from {self.pid_file} already runs on port {record['port']}, not "
                        f"{self.port}; stop it first (python -m tracking.server stop --data-dir {self.data_dir})"
                    )
                self.port, self.host = record["port"], record["host"]
                return self._wait_healthy(record["pid"], None, timeout)
            self.pid_file.unlink(missing_ok=True)  # stale record: its process is gone
            return self._launch(timeout)

    def _launch(self, timeout: float) -> str:
        if self.backend_store_uri.startswith("sqlite:///"):
            Path(self.backend_store_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        if "://" not in self.artifacts_destination:
            Path(self.artifacts_destination).mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port(self.host)
        elif not _port_is_free(self.host, self.port):
            raise TrackingError(f"port {self.port} on {self.host} is already in use; pick another --port")

        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", self.artifacts_destination,
            "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
            *self.extra_args,
        ]
        env = dict(os.environ)
        # The job runner serves GenAI evaluation jobs only; it spawns a dozen processes.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        with open(self.log_file, "ab") as log:
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=self.data_dir, start_new_session=True)
        record = {"pid": proc.pid, "port": self.port, "host": self.host, "url": self.url,
                  "backend_store_uri": self.backend_store_uri,
                  "artifacts_destination": self.artifacts_destination, "log": str(self.log_file)}
        atomic_write(self.pid_file, json.dumps(record, indent=2))
        return self._wait_healthy(proc.pid, proc, timeout)

    def _wait_healthy(self, pid: int, proc, timeout: float) -> str:
        """Poll `/health` until it answers; on failure stop what we started and raise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = proc.poll() is not None if proc else not _is_mlflow_server(pid)
            if exited:
                self.pid_file.unlink(missing_ok=True)
                code = f" with code {proc.returncode}" if proc else ""
                raise TrackingError(f"mlflow server exited{code} during startup: {_last_line(self.log_file)} "
                                    f"(log: {self.log_file})")
            if is_healthy(self.url):
                return self.url
            time.sleep(0.2)
        if proc:
            _terminate_group(proc.pid)
            self.pid_file.unlink(missing_ok=True)
        raise TrackingError(f"mlflow server on {self.url} not healthy after {timeout:.0f} s (log: {self.log_file})")

    def stop(self, timeout: float = 20) -> None:
        """Stop the recorded server (its whole process group) and remove the pid file."""
        record = _read_json(self.pid_file)
        if record and _is_mlflow_server(record.get("pid")):
            _terminate_group(record["pid"], timeout)
        self.pid_file.unlink(missing_ok=True)

    def running_record(self) -> dict | None:
        """The pid-file record if that server process is alive and answers /health, else None."""
        record = _read_json(self.pid_file)
        if not record:
            return None
        if _is_mlflow_server(record.get("pid")) and is_healthy(record.get("url", ""), timeout=3):
            return record
        if not _is_mlflow_server(record.get("pid")):
            self.pid_file.unlink(missing_ok=True)  # stale: the process is gone
        return None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def resolve_tracking_uri(tracking_uri: str | None = None, data_dir=None, *, start: bool = True) -> str:
    """The tracking URI to use: explicit > `MLFLOW_TRACKING_URI` > the embedded local server.

    The embedded server keeps its state in `data_dir` (default `default_server_dir()`); it is
    started on first use and reused afterwards. With `start=False` (tools that only read, such as
    `tracking.compare`) a server that is not already running is an error, never a new empty one.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return validate_tracking_uri(uri)
    server = MlflowServer(data_dir or default_server_dir())
    if start:
        return server.start()
    record = server.running_record()
    if record is None:
        raise TrackingError(f"no MLflow server given and none running in {server.data_dir}: pass --tracking-uri, "
                            "set MLFLOW_TRACKING_URI, or set VGGT_MLFLOW_DIR to the folder of the sweep's server")
    return record["url"]


def default_server_dir() -> Path:
    """Where the embedded server keeps its state: `$VGGT_MLFLOW_DIR`, else `./.mlflow-server`."""
    return Path(os.environ.get("VGGT_MLFLOW_DIR") or DEFAULT_DIR_NAME)


def validate_tracking_uri(uri: str) -> str:
    """Accept only an MLflow server address (`http(s)://host:port[/prefix]`)."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise TrackingError(f"tracking URI {uri!r} is not an MLflow server address like http://127.0.0.1:5000")
    return uri.rstrip("/")


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    """True when `GET <url>/health` answers 200."""
    if not url:
        return False
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _connect_host(host: str) -> str:
    """Where a local client connects: loopback when the server binds all interfaces."""
    import ipaddress

    try:
        return "127.0.0.1" if not host or ipaddress.ip_address(host).is_unspecified else host
    except ValueError:  # a host name
        return host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_mlflow_server(pid) -> bool:
    """True if `pid` is alive and is an `mlflow server` (guards against recycled pids)."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except (OSError, TypeError, ValueError):
        return False
    return b"mlflow" in b" ".join(cmdline) and b"server" in cmdline


def _terminate_group(pid: int, timeout: float = 20) -> None:
    """SIGTERM the server's process group (uvicorn workers included), SIGKILL if it lingers."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid != pid:  # not the session leader we started: signal the process only
        _signal_and_wait(lambda sig: os.kill(pid, sig), pid, timeout)
        return
    _signal_and_wait(lambda sig: os.killpg(pgid, sig), pid, timeout)


def _signal_and_wait(send, pid: int, timeout: float) -> None:
    try:
        send(signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            break
        time.sleep(0.1)
    try:
        send(signal.SIGKILL)  # leftovers of the group (workers that ignored SIGTERM)
    except ProcessLookupError:
        pass
    while _alive(pid) and time.monotonic() < deadline + 5:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


@cli_main
def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m tracking.server", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--data-dir", default=None, help="default: $VGGT_MLFLOW_DIR or ./.mlflow-server")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--backend-store-uri", default=None)
    parser.add_argument("--artifacts-destination", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait for /health")
    args = parser.parse_args(argv)
    if args.workers < 1:
        raise TrackingError(f"--workers {args.workers} must be at least 1")
    data_dir = args.data_dir or default_server_dir()
    server = MlflowServer(data_dir, port=args.port, host=args.host, backend_store_uri=args.backend_store_uri,
                          artifacts_destination=args.artifacts_destination, workers=args.workers)
    if args.command == "start":
        print(server.start(timeout=args.timeout))
        return 0
    if args.command == "stop":
        was_running = server.running_record() is not None or server.pid_file.exists()
        server.stop()
        print("stopped" if was_running else f"no server recorded in {server.pid_file}")
        return 0
    record = server.running_record()
    if record:
        print(f"running {record['url']} pid {record['pid']} backend {record['backend_store_uri']}")
        return 0
    print(f"not running (no healthy server recorded in {server.pid_file})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
