"""Running `sweeps/run.py` under fault injection: driver processes, Ray worker lookup, MLflow reads.

Sweeps run the real sweep code (Optuna + ASHA on a local Ray, Ray Train workers, the MLflow
logger and driver callback) with the training stand-in of tests/sweeps/standin_sweep.py (it keeps
the training contract: reporter calls, adapter checkpoints, resume from a checkpoint, the
`train.inject_nan_at_step` divergence hook), sized by the sweep's own CLI flags and space file.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
STANDIN = REPO_ROOT / "tests" / "sweeps" / "standin_sweep.py"


def sweep_env(extra: dict | None = None) -> dict:
    env = {**os.environ, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300", **(extra or {})}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    return env


def start_sweep(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    """The sweep driver as its own process group (it starts the local Ray below it)."""
    out = log.open("w")
    return subprocess.Popen([sys.executable, str(STANDIN), *args], env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_ROOT)


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def kill_ray_leftovers(root_pid: int) -> None:
    """After a SIGKILLed driver: end the Ray processes it started (its descendants only)."""
    for proc in _descendants_by_session(root_pid):
        try:
            proc.kill()
        except psutil.Error:
            pass


def _descendants_by_session(session_id: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == session_id and proc.pid != os.getpid():
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


TRAINING_PROCESS = {  # launcher → the title of the Ray process that runs lora_train
    "ray_train": "RayTrainWorker",  # a Ray Train worker of the trial's TorchTrainer
    "in_trial": "ImplicitFunc",  # the Tune trial's own process (a function trainable)
}


def train_workers(driver: subprocess.Popen, launcher: str = "ray_train") -> list[psutil.Process]:
    """Processes that run training in this sweep (same session as the driver, started below it)."""
    workers = []
    for proc in _descendants_by_session(driver.pid):
        try:
            if TRAINING_PROCESS[launcher] in " ".join(proc.cmdline()):
                workers.append(proc)
        except psutil.Error:
            continue
    return workers


def checkpoints(sweep_dir: Path) -> list[Path]:
    """Tune checkpoints of every trial (`<sweep_dir>/<trial_id>/checkpoint_*`); Tune keeps only
    the last few per trial, so compare sets of paths to see new ones, not counts."""
    return sorted(sweep_dir.glob("*/checkpoint_*"))


def epochs_reported(log: Path) -> int:
    """Epoch results the sweep's live progress has printed so far (`... <trial> epoch N: ...`)."""
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if line.startswith("[sweep") and " epoch " in line)


def wait_for(predicate, timeout: float, driver: subprocess.Popen | None = None, log: Path | None = None,
             interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if driver is not None and driver.poll() is not None:
            raise AssertionError(f"sweep exited ({driver.returncode}) while waiting:\n"
                                 + (log.read_text()[-4000:] if log else ""))
        time.sleep(interval)
    raise AssertionError("timed out waiting" + (f":\n{log.read_text()[-4000:]}" if log else ""))


def tune_results(sweep_dir: Path) -> dict[str, list[dict]]:
    """trial_id → every result the trial reported to Tune (from its result.json)."""
    results = {}
    for path in sweep_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            results[rows[0]["trial_id"]] = rows
    return results


def metric_steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))
