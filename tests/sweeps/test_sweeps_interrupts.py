"""The interrupt and resume contract, on real Ray and a real MLflow server (stand-in trainer).

Ctrl-C once, or twice: exit 130, one resume line, parent and unfinished trials KILLED with
`interrupted`, Optuna trials never FAIL, nothing registered. `--resume` then continues every
interrupted trial from its last checkpoint, logs every (metric, step) once, and
`--resume --num-samples N` runs the extra trials; the champion decision comes at the end.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from tracking.runs import SweepTracker

STANDIN = Path(__file__).resolve().parent / "standin_sweep.py"
SPACE = textwrap.dedent("""\
    name: {name}
    budget: {{num_samples: 3, max_epochs: 4}}
    resources: {{cpus_per_trial: 1}}
    asha: {{grace_period: 4, reduction_factor: 2}}
    sampler: {{seed: 1, n_startup_trials: 3}}
    selection: {{top_k: 0}}
    strategies: {{B: {{}}, C: {{}}}}
    parameters:
      lora.rank: {{type: int, low: 4, high: 8}}
      optim.lr: {{type: float, low: 1e-4, high: 1e-2, log: true}}
    """)


def start(args, log: Path) -> subprocess.Popen:
    env = {**os.environ, "STANDIN_EPOCH_S": "1.5"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return subprocess.Popen([sys.executable, str(STANDIN), *args], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(log: Path, proc, predicate, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = log.read_text()
        if predicate(text):
            return text
        assert proc.poll() is None, text[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"timed out; log:\n{log.read_text()[-3000:]}")


def interrupt(tmp_path, url, name, signals: int):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(name=name))
    args = ["--space", str(space), "--storage-path", str(tmp_path / "store"), "--tracking-uri", url,
            "--max-concurrent", "2", "--interrupt-grace", "30"]
    log = tmp_path / "first.log"
    proc = start(args, log)
    try:  # interrupt while two trials are between epochs 1 and 4
        wait_for(log, proc, lambda text: text.count(" epoch 1: ") >= 2)
        for _ in range(signals):
            os.killpg(proc.pid, signal.SIGINT)  # the whole process group, as a terminal's Ctrl-C does
            time.sleep(1.0)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return args, log.read_text(), code


def check_interrupted_state(tmp_path, url, name, output, code):
    assert code == 130, output[-3000:]
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert last.startswith("interrupted: ") and "resume with: " in last and last.endswith("--resume"), last
    assert "Tuner.restore" not in output  # Ray's advice is not ours
    tracker = SweepTracker(url, name, create=False)
    parent = tracker.get_run(tracker.require_parent())
    assert parent.info.status == "KILLED" and parent.data.tags["sweep.status"] == "interrupted"
    runs = tracker.trial_runs()
    assert all(r.info.status != "RUNNING" for r in runs)
    assert {"interrupted"} <= {r.data.tags.get("trial.status") for r in runs}
    for run in runs:
        if run.data.tags.get("trial.status") == "interrupted":
            assert run.info.status == "KILLED"
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'store' / name / 'optuna.db'}")
    assert "FAIL" not in {t.state.name for t in study.trials}
    with pytest.raises(Exception):
        tracker.client.get_registered_model(name)  # nothing registered from a partial sweep
    return tracker


def check_resumed(tracker, name, expected_trials):
    runs = tracker.trial_runs()
    assert len(runs) == expected_trials
    assert {r.data.tags["trial.status"] for r in runs} <= {"completed", "early_stopped"}
    for run in runs:  # every (metric, step) once, epochs on their own axis
        for key in ("train/loss", "val/abs_rel"):
            steps = [m.step for m in tracker.metric_history(run.info.run_id, key)]
            repeats = [s for s, n in Counter(steps).items() if n > 1]
            assert not repeats, (run.data.tags["ray.trial_id"], key, steps)
        epochs = [m.step for m in tracker.metric_history(run.info.run_id, "val/abs_rel")]
        if run.data.tags["trial.status"] == "completed":
            assert epochs == [1, 2, 3, 4], epochs
    # Decided on the whole sweep; the stand-in writes no per-window evaluation, so nothing is promoted.
    assert tracker.get_run(tracker.parent_run_id).data.tags["champion.decision"] == "rejected"
    assert not tracker.client.search_model_versions(f"name = '{name}'")


@pytest.mark.slow
def test_one_ctrl_c_then_resume_and_extend(tmp_path, sweep_mlflow, sweep_env):
    args, output, code = interrupt(tmp_path, sweep_mlflow, "intr-once", signals=1)
    tracker = check_interrupted_state(tmp_path, sweep_mlflow, "intr-once", output, code)
    assert "waiting up to 30 s" in output

    resumed = subprocess.run([sys.executable, str(STANDIN), *args, "--resume"], capture_output=True, text=True,
                             timeout=900, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    check_resumed(tracker, "intr-once", 3)
    study = optuna.load_study(study_name="intr-once",
                              storage=f"sqlite:///{tmp_path / 'store' / 'intr-once' / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 3

    extended = subprocess.run([sys.executable, str(STANDIN), *args, "--resume", "--num-samples", "4"],
                              capture_output=True, text=True, timeout=900,
                              env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert extended.returncode == 0, extended.stdout[-3000:] + extended.stderr[-3000:]
    check_resumed(tracker, "intr-once", 4)


@pytest.mark.slow
def test_two_ctrl_c_stop_at_once_and_resume(tmp_path, sweep_mlflow, sweep_env):
    args, output, code = interrupt(tmp_path, sweep_mlflow, "intr-twice", signals=2)
    tracker = check_interrupted_state(tmp_path, sweep_mlflow, "intr-twice", output, code)
    assert "Traceback" not in output
    resumed = subprocess.run([sys.executable, str(STANDIN), *args, "--resume"], capture_output=True, text=True,
                             timeout=900, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    check_resumed(tracker, "intr-twice", 3)
