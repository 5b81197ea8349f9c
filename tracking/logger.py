"""The metric logger used inside a trial (rank 0): batched, asynchronous, survives server outages.

`log_metrics` only appends to an in-memory list; a background thread sends what accumulated
every `send_interval` seconds with one MLflow `runs/log-batch` request per 1000 entities (the
request `MlflowClient.log_batch` makes, sent with a short timeout and no retry loop so a down
server costs milliseconds, not MLflow's default minutes of retries).

When the server is unreachable, everything (metrics, params, tags, staged artifact copies) goes
to a local spool file (JSON lines, fsync'd). While the spool is non-empty new records are
appended behind it, so order is kept; once `/health` answers again the spool is replayed and
removed. Replays are idempotent: metric entries keep their original timestamps, and the server
drops an entry identical in (key, step, timestamp, value) to one it has; params are write-once,
tags overwrite. A new logger on the same spool path (a restarted trial) replays what the previous
process left. Tracking trouble never raises into the training loop: it is logged as a warning.
"""

import json
import logging
import math
import os
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

import requests

from tracking.errors import TrackingError
from tracking.params import (
    MAX_METRICS_PER_BATCH,
    MAX_TAG_VALUE_LENGTH,
    batches,
    best_metric_name,
    flatten_params,
    truncate,
)
from tracking.server import validate_tracking_uri
from vggt_common.files import atomic_write

_log = logging.getLogger(__name__)

LOG_BATCH_ENDPOINT = "/api/2.0/mlflow/runs/log-batch"
GET_RUN_ENDPOINT = "/api/2.0/mlflow/runs/get"


class MetricLogger:
    """Logs one MLflow run's metrics, params, tags and artifacts from inside a trial.

    Args:
        tracking_uri: the MLflow server, `http://host:port`.
        run_id: the run to log into (opened by `SweepTracker.open_trial`).
        spool_path: local JSON-lines file that holds what could not be sent yet.
        best: metrics to keep a best-so-far for, e.g. `{"val/abs_rel": "min"}` maintains
            `best/val_abs_rel` (seeded from the run, so a restarted trial continues it).
        send_interval: seconds between background sends (entries batch up meanwhile; a send also
            starts as soon as 1000 metrics are pending). Short, so a flush has little left to send.
        http_timeout: seconds one request may take before the server counts as down.
        probe_interval: seconds between `/health` probes while the server is down.
        gil_switch_interval: if set, lower the interpreter's GIL switch interval to this many
            seconds (process-wide; never raised). With the default 5 ms, the training thread
            waits up to 5 ms behind the sender thread after every GPU/BLAS call that released the
            GIL (a convoy); at 0.5 ms the training loop runs as fast as with no logging at all
            (`benchmarks/bench_logging_overhead.py`). None leaves it alone.
    """

    def __init__(self, tracking_uri: str, run_id: str, spool_path, best: dict[str, str] | None = None, *,
                 send_interval: float = 0.25, http_timeout: float = 5.0, probe_interval: float = 2.0,
                 gil_switch_interval: float | None = 0.0005):
        if gil_switch_interval is not None and sys.getswitchinterval() > gil_switch_interval:
            sys.setswitchinterval(gil_switch_interval)
        self.url = validate_tracking_uri(tracking_uri)
        self.run_id = run_id
        self.spool_path = Path(spool_path)
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        self.staging_dir = self.spool_path.with_name(self.spool_path.name + ".artifacts")
        self.best_modes = dict(best or {})
        for key, mode in self.best_modes.items():
            if mode not in ("min", "max"):
                raise TrackingError(f"best mode for {key!r} is {mode!r}; use 'min' or 'max'")
        self.send_interval = send_interval
        self.http_timeout = http_timeout
        self.probe_interval = probe_interval

        self._cond = threading.Condition()
        self._pending: list[dict] = []  # records not yet taken by the sender thread
        self._pending_metrics = 0
        self._cycles_started = 0  # sender cycles that took the pending records
        self._cycles_done = 0
        self._urgent = False  # flush() asked for a send now
        self._closed = False
        self._spooled = self.spool_path.exists() and self.spool_path.stat().st_size > 0
        self._online = True
        self._next_probe = 0.0
        self._best_values: dict[str, float] | None = None  # seeded from the server on first contact
        self._warned: set[str] = set()
        self.requests_sent = 0  # successful log-batch requests (benchmarks: ~1 per 1000 entities)
        self._session = _make_session()
        self._thread = threading.Thread(target=self._run, name=f"mlflow-logger-{run_id[:8]}", daemon=True)
        self._thread.start()

    # ---- called by the training loop: cheap, never blocks on the network, never raises ----

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue `metrics` at `step` (timestamp taken now); sent in the background."""
        timestamp = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            try:
                entries.append([key, float(value), timestamp, int(step)])
            except (TypeError, ValueError):
                self._warn_once(f"metric:{key}", "metric %r has non-numeric value %r; not logged", key, value)
        with self._cond:
            self._append({"type": "batch", "metrics": entries, "params": [], "tags": []})
            self._pending_metrics += len(entries)
            if self._pending_metrics >= MAX_METRICS_PER_BATCH:
                self._cond.notify_all()

    def log_params(self, params: dict) -> None:
        """Queue params; nested dicts become dotted names (`{"optim": {"lr": 1e-4}}` → `optim.lr`)."""
        flat = flatten_params(params)
        with self._cond:
            self._append({"type": "batch", "metrics": [], "params": [[k, v] for k, v in flat.items()], "tags": []})

    def set_tags(self, tags: dict) -> None:
        entries = [[k, truncate(k, str(v), MAX_TAG_VALUE_LENGTH)] for k, v in tags.items()]
        with self._cond:
            self._append({"type": "batch", "metrics": [], "params": [], "tags": entries})

    def log_artifacts(self, local_dir, artifact_path: str | None = None) -> None:
        """Upload the files of `local_dir` under `artifact_path` (run root when None). A copy is
        staged first, so the caller may overwrite or delete `local_dir` right after this returns."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            self._warn_once(f"dir:{local_dir}", "artifact directory %s does not exist; not logged", local_dir)
            return
        self._stage(artifact_path, lambda staged: shutil.copytree(local_dir, staged))

    def log_artifact(self, local_path, artifact_path: str | None = None) -> None:
        """Upload one file (e.g. `config.yaml`) under `artifact_path` (run root when None)."""
        local_path = Path(local_path)
        if not local_path.is_file():
            self._warn_once(f"file:{local_path}", "artifact file %s does not exist; not logged", local_path)
            return

        def copy(staged: Path) -> None:
            staged.mkdir(parents=True)
            shutil.copy2(local_path, staged / local_path.name)

        self._stage(artifact_path, copy)

    def _stage(self, artifact_path: str | None, copy) -> None:
        staged = self.staging_dir / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        try:
            copy(staged)
        except OSError as err:
            _log.warning("could not stage artifacts for %s: %s", artifact_path or "the run root", err)
            return
        with self._cond:
            self._pending.append({"type": "artifacts", "dir": str(staged), "path": artifact_path or None})

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is sent or spooled (call at every epoch boundary).

        Returns True when all of it reached the server, False when some of it waits in the
        spool (server down) or `timeout` ran out first.
        """
        with self._cond:
            if self._closed:
                return not self._pending and not self._spooled
            cycle = self._cycles_started + 1  # the first cycle that starts after this request
            self._urgent = True
            self._cond.notify_all()
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._cycles_done < cycle and self._thread.is_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.5 if left is None else min(left, 0.5))
            return self._cycles_done >= cycle and not self._spooled

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, stop the sender thread; whatever is still in memory after `timeout` is spooled."""
        if self._closed:
            return
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            leftover, self._pending = self._pending, []
        if leftover:
            self._spool(leftover)
        if self._spooled:
            _log.warning("MLflow server %s unreachable: records for run %s stay in %s; a logger on the same "
                         "spool path replays them", self.url, self.run_id, self.spool_path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the sender thread ----

    def _append(self, record: dict) -> None:
        """Merge consecutive batch records so one send covers many steps (caller holds the lock)."""
        last = self._pending[-1] if self._pending else None
        if last is not None and last["type"] == "batch":
            for field in ("metrics", "params", "tags"):
                last[field].extend(record[field])
        else:
            self._pending.append(record)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._urgent or self._closed
                                    or self._pending_metrics >= MAX_METRICS_PER_BATCH, self.send_interval)
                records, self._pending = self._pending, []
                self._pending_metrics = 0
                urgent, self._urgent = self._urgent, False
                closing = self._closed
                self._cycles_started += 1
            try:
                self._process(records, urgent or closing)
            except Exception as err:  # never let tracking kill the trial
                _log.warning("MLflow logging failed unexpectedly (%s: %s); spooling", type(err).__name__, err)
                try:
                    self._spool(records)
                except OSError as spool_err:
                    _log.warning("could not write spool %s (%s): %d records lost", self.spool_path, spool_err,
                                 len(records))
            finally:
                with self._cond:
                    self._cycles_done += 1
                    self._cond.notify_all()
            if closing:
                return

    def _process(self, records: list[dict], urgent: bool) -> None:
        if self._spooled and self._probe(force=urgent):
            self._replay()
        if self._spooled or not self._online and not self._probe(force=urgent):
            self._spool(records)  # keep order: new records queue behind the spool
            return
        for index, record in enumerate(records):
            if not self._deliver(record):
                self._spool(records[index:])
                return

    def _deliver(self, record: dict) -> bool:
        """Send one record; False when the server is unreachable (the record must be kept)."""
        if record["type"] == "artifacts":
            return self._upload(record)
        if self._best_values is None and not self._seed_best():
            return False
        metrics = record["metrics"] + self._best_entries(record["metrics"])
        for m, p, t in batches(metrics, record["params"], record["tags"]):
            if not self._post_batch(m, p, t):
                return False
        return True

    def _post_batch(self, metrics: list, params: list, tags: list) -> bool:
        body = {
            "run_id": self.run_id,
            "metrics": [{"key": k, "value": _json_number(v), "timestamp": ts, "step": s} for k, v, ts, s in metrics],
            "params": [{"key": k, "value": v} for k, v in params],
            "tags": [{"key": k, "value": v} for k, v in tags],
        }
        status, message = self._request("POST", LOG_BATCH_ENDPOINT, json=body)
        if status == 200:
            self.requests_sent += 1
            return True
        if status is None or status == 429 or status >= 500:
            return False
        # Rejected for good (4xx): a changed param value, a deleted run, ... Keep what can be kept.
        if params:  # send the rest, then each param alone so only the offending ones are lost
            if (metrics or tags) and not self._post_batch(metrics, [], tags):
                return False
            if len(params) == 1:
                self._warn_once(f"params:{message}", "MLflow rejected params for run %s (%s)", self.run_id, message)
                return True
            return all(self._post_batch([], [param], []) for param in params)
        self._warn_once(f"rejected:{message}", "MLflow rejected a batch for run %s (%s); dropped", self.run_id, message)
        return True

    def _upload(self, record: dict) -> bool:
        if not self._probe(force=True):
            return False
        from mlflow import MlflowClient

        try:
            MlflowClient(self.url).log_artifacts(self.run_id, record["dir"], record["path"])
        except Exception as err:
            if _is_connection_error(err):
                self._online = False
                return False
            _log.warning("artifact upload of %s to run %s failed: %s; dropped", record["path"], self.run_id, err)
        shutil.rmtree(record["dir"], ignore_errors=True)
        return True

    def _best_entries(self, metrics: list) -> list:
        entries = []
        for key, value, timestamp, step in metrics:
            mode = self.best_modes.get(key)
            if mode is None or math.isnan(value):
                continue
            best = self._best_values.get(key)
            if best is None or (value < best if mode == "min" else value > best):
                best = self._best_values[key] = value
            entries.append([best_metric_name(key), best, timestamp, step])
        return entries

    def latest_steps(self) -> dict[str, int] | None:
        """`{metric: highest step logged}` of the run on the server (MLflow's latest value of a
        metric is the one at its highest step); None while the server is unreachable. A resumed
        trial uses it to log every (metric, step) exactly once."""
        status, payload = self._request("GET", GET_RUN_ENDPOINT, params={"run_id": self.run_id})
        if status != 200:
            return None
        return {m["key"]: int(m.get("step", 0)) for m in payload.get("run", {}).get("data", {}).get("metrics", [])}

    def _seed_best(self) -> bool:
        """Start best-so-far values from the run's logged `best/*` metrics (restarted trials)."""
        if not self.best_modes:
            self._best_values = {}
            return True
        status, payload = self._request("GET", GET_RUN_ENDPOINT, params={"run_id": self.run_id})
        if status is None or status >= 500:
            return False
        logged = {}
        if status == 200:
            logged = {m["key"]: float(m["value"]) for m in payload.get("run", {}).get("data", {}).get("metrics", [])}
        self._best_values = {k: logged[best_metric_name(k)] for k in self.best_modes if best_metric_name(k) in logged}
        return True

    def _request(self, method: str, endpoint: str, **kwargs) -> tuple[int | None, dict | str]:
        """One HTTP call, no retries. Returns (status, JSON or message); status None = unreachable."""
        try:
            response = self._session.request(method, self.url + endpoint, timeout=(2.0, self.http_timeout), **kwargs)
        except requests.RequestException as err:
            if self._online:
                _log.warning("MLflow server %s unreachable (%s); spooling to %s", self.url, type(err).__name__,
                             self.spool_path)
            self._online = False
            return None, str(err)
        if response.status_code == 429 or response.status_code >= 500:
            self._online = False
            return response.status_code, response.text[:300]
        self._online = True
        try:
            payload = response.json()
        except ValueError:
            payload = {"message": response.text[:300]}
        message = payload.get("message", "") if isinstance(payload, dict) else ""
        return response.status_code, payload if response.status_code == 200 else message

    def _probe(self, force: bool = False) -> bool:
        """Is the server back? Rate-limited to one `/health` call per `probe_interval`."""
        if self._online and not self._spooled:
            return True
        now = time.monotonic()
        if not force and now < self._next_probe:
            return False
        self._next_probe = now + self.probe_interval
        try:
            ok = self._session.get(self.url + "/health", timeout=(1.0, 2.0)).status_code == 200
        except requests.RequestException:
            ok = False
        if ok and not self._online:
            _log.warning("MLflow server %s is back; replaying %s", self.url, self.spool_path)
        self._online = ok
        return ok

    # ---- the spool ----

    def _spool(self, records: list[dict]) -> None:
        if not records:
            return
        with open(self.spool_path, "a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._spooled = True

    def _replay(self) -> bool:
        records = _read_spool(self.spool_path)
        for index, record in enumerate(records):
            if not self._deliver(record):
                _rewrite_spool(self.spool_path, records[index:])
                return False
        self.spool_path.unlink(missing_ok=True)
        self._spooled = False
        return True

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(message, *args)


def _make_session() -> requests.Session:
    """A requests session with the client-side MLflow auth/TLS settings from the environment."""
    session = requests.Session()
    if os.environ.get("MLFLOW_TRACKING_USERNAME") and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        session.auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        session.headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        session.verify = False
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        session.verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    return session


def _json_number(value: float):
    """Protobuf JSON spells non-finite doubles as strings."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _read_spool(path: Path) -> list[dict]:
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return records
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut short by a crash mid-write
            _log.warning("skipping unreadable line %d of spool %s", number, path)
    return records


def _rewrite_spool(path: Path, records: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records), fsync=True)


def _is_connection_error(err: Exception) -> bool:
    text = f"{type(err).__name__} {err}"
    return any(s in text for s in ("ConnectionError", "Max retries", "Connection refused", "timed out", "Timeout"))

