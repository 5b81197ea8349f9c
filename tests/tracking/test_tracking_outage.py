"""Server outage mid-trial: stop the real server, keep logging, restart it on the same port and
data dir; every metric arrives exactly once. Also: a restarted trial replays a leftover spool, and a
replay of already-delivered records adds nothing (entries are idempotent)."""

import json
import shutil
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tracking.logger import MetricLogger
from tracking.runs import SweepTracker
from tracking.server import is_healthy

STEPS_UP, STEPS_DOWN, STEPS_AFTER = 40, 60, 30
KEYS = [f"train/{k}" for k in ("loss", "camera", "conf_depth", "reg_depth", "grad_depth", "lr")] + ["time/step_s"]


def value(key: str, step: int) -> float:
    return KEYS.index(key) + step / 1000.0


def server_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracking.server", *args], capture_output=True, text=True, timeout=240)


def test_outage_loses_nothing_and_duplicates_nothing(mlflow_server_factory, tmp_path, caplog):
    server = mlflow_server_factory(data_dir=tmp_path / "server")
    uri, port, data_dir = server.url, server.port, str(server.data_dir)
    tracker = SweepTracker(uri, "outage")
    tracker.open_parent("outage", {"lora": {"rank": {"choices": [4]}}}, "lora: {rank: {choices: [4]}}\n")
    run_id = tracker.open_trial("trial-outage", {"lora": {"rank": 4}})
    spool = tmp_path / "spool.jsonl"
    logger = MetricLogger(uri, run_id, spool, best={"val/abs_rel": "min"}, send_interval=0.2, probe_interval=0.3)

    step = 0
    for step in range(STEPS_UP):
        logger.log_metrics({k: value(k, step) for k in KEYS}, step)
    logger.log_metrics({"val/abs_rel": 0.30}, step=0)
    assert logger.flush(timeout=60)

    stopped = server_cli("stop", "--data-dir", data_dir)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not is_healthy(uri)
    assert server_cli("status", "--data-dir", data_dir).returncode == 1

    for step in range(STEPS_UP, STEPS_UP + STEPS_DOWN):  # training goes on; nothing raises
        logger.log_metrics({k: value(k, step) for k in KEYS}, step)
    logger.log_metrics({"val/abs_rel": 0.20}, step=1)
    logger.log_params({"lora": {"trainable_params": 1234}})
    logger.set_tags({"trial.host": "node-1"})
    artifact_dir = tmp_path / "adapter"
    artifact_dir.mkdir()
    (artifact_dir / "adapter_config.json").write_text(json.dumps({"r": 4}))
    logger.log_artifacts(artifact_dir, "adapter")
    shutil.rmtree(artifact_dir)  # the caller may delete its dir: a copy was staged
    assert logger.flush(timeout=60) is False  # epoch boundary while down: spooled, not sent
    assert spool.exists() and spool.read_text().count("\n") >= 1
    spooled_copy = tmp_path / "spool-copy.jsonl"
    shutil.copy(spool, spooled_copy)
    assert "unreachable" in caplog.text

    started = server_cli("start", "--data-dir", data_dir, "--port", str(port), "--timeout", "180")
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == uri
    status = server_cli("status", "--data-dir", data_dir)
    assert status.returncode == 0 and uri in status.stdout

    for step in range(STEPS_UP + STEPS_DOWN, STEPS_UP + STEPS_DOWN + STEPS_AFTER):
        logger.log_metrics({k: value(k, step) for k in KEYS}, step)
    logger.log_metrics({"val/abs_rel": 0.25}, step=2)
    assert logger.flush(timeout=60), "server is back: the spool must be replayed"
    logger.close()
    assert not spool.exists()

    total = STEPS_UP + STEPS_DOWN + STEPS_AFTER
    client = MlflowClient(uri)
    assert_every_metric_exactly_once(client, run_id, total)
    run = client.get_run(run_id)
    assert run.data.params["lora.trainable_params"] == "1234"
    assert run.data.tags["trial.host"] == "node-1"
    assert [a.path for a in client.list_artifacts(run_id, "adapter")] == ["adapter/adapter_config.json"]
    best = sorted(client.get_metric_history(run_id, "best/val_abs_rel"), key=lambda m: m.step)
    assert [m.value for m in best] == pytest.approx([0.30, 0.20, 0.20])

    # A crash between "sent" and "spool removed" leaves records that were delivered: a new logger
    # on that spool (the restarted trial) replays them, and the server keeps each entry once.
    shutil.copy(spooled_copy, spool)
    replayer = MetricLogger(uri, run_id, spool, best={"val/abs_rel": "min"}, send_interval=0.2)
    assert replayer.flush(timeout=60)
    replayer.close()
    assert not spool.exists()
    assert_every_metric_exactly_once(client, run_id, total)
    tracker.close_trial(run_id, "completed")


def test_logger_closed_while_server_down_replays_on_restart(mlflow_server, tmp_path):
    """The spool outlives the process: a logger pointed at a dead server keeps everything on disk,
    and the next logger on that spool path delivers it."""
    tracker = SweepTracker(mlflow_server, "outage-replay")
    tracker.open_parent("outage-replay", {}, "{}\n")
    run_id = tracker.open_trial("t", {})
    spool = tmp_path / "spool.jsonl"
    dead = f"http://127.0.0.1:{_closed_port()}"
    logger = MetricLogger(dead, run_id, spool, send_interval=0.1)
    for step in range(25):
        logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
    assert logger.flush(timeout=30) is False
    logger.close()
    lines = [json.loads(line) for line in spool.read_text().splitlines()]
    assert sum(len(r["metrics"]) for r in lines if r["type"] == "batch") == 25

    logger = MetricLogger(mlflow_server, run_id, spool, send_interval=0.1)
    assert logger.flush(timeout=60)
    logger.close()
    history = MlflowClient(mlflow_server).get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(25))


def assert_every_metric_exactly_once(client, run_id, total):
    for key in KEYS:
        history = client.get_metric_history(run_id, key)
        steps = sorted(m.step for m in history)
        assert steps == list(range(total)), f"{key}: {len(steps)} entries for {total} steps"
        assert all(m.value == pytest.approx(value(key, m.step)) for m in history)


def _closed_port() -> int:
    from tracking.server import free_port

    return free_port()  # nothing listens there once the probe socket is closed
