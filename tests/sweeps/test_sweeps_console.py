"""The sweep's console: quiet by default (events, leaderboard, champion line, links), everything else
in driver.log / trials/<id>/trial.log, `--verbose` shows it all; `python -m sweeps status`.

The sweeps run the real sweep code on a local Ray and a real MLflow server with the stand-in
trainer of tests/sweeps/standin_sweep.py (its rank-13 point fails, on purpose).
"""

import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sweeps.console import (
    INDENT,
    Console,
    TrialState,
    eta_seconds,
    progress,
    trial_output,
)
from tests.plugins.chromium import Browser
from tracking import ui
from tracking.runs import SweepTracker

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "sweeps" / "standin_sweep.py"
SPACE = textwrap.dedent("""\
    name: {name}
    budget: {{num_samples: 4, max_epochs: 2}}
    resources: {{cpus_per_trial: 1, workers_per_trial: 1}}
    asha: {{grace_period: 1, reduction_factor: 2}}
    sampler: {{seed: 3, n_startup_trials: 2}}
    failure: {{max_failures: 0}}
    selection: {{top_k: 0}}            # no confirm phase
    strategies: {{A: {{}}, C: {{}}}}
    parameters:
      lora.rank: {{type: int, low: 4, high: 13}}
      optim.lr: {{type: float, low: 1e-4, high: 1e-2, log: true}}
    points_to_evaluate:
      - {{lora.strategy: C, lora.rank: 8, optim.lr: 1.0e-3}}
      - {{lora.strategy: A, lora.rank: 13, optim.lr: 1.0e-3}}
    """)
NOISE = ["View run", "View experiment", "Warning", "WARNING", "INFO", "[I 20", "Downloading artifacts",
         "Token authentication", "pid=", "Checkpoint successfully created", "Traceback"]


def _env(**extra):
    env = {**os.environ, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300", **extra}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


def _sweep_args(tmp_path, name, url):
    space = tmp_path / f"{name}.yaml"
    space.write_text(SPACE.format(name=name))
    return ["--space", str(space), "--storage-path", str(tmp_path / "store"), "--tracking-uri", url,
            "--max-concurrent", "2"]


def _status(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps", "status", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=_env(), check=False)


# ---- without Ray ----

def test_eta_from_epochs_trained_and_left():
    # 2 at a time; 3 s per epoch so far; the ended trials trained 1 and 3 epochs (expected: 2)
    states = [TrialState("a", "a", "TERMINATED", 1, 3.0), TrialState("b", "b", "TERMINATED", 3, 9.0),
              TrialState("c", "c", "RUNNING", 1, 3.0), TrialState("d", "d", "PENDING")]
    # c: 1 more epoch; d and one trial not created yet: 2 epochs each → 5 epochs × 3 s ÷ 2
    assert eta_seconds(states, pending=2, max_epochs=4, concurrency=2) == pytest.approx(7.5)
    assert eta_seconds([TrialState("a", "a", "RUNNING")], pending=3, max_epochs=4, concurrency=2) is None
    summary = progress(states, total=5, max_epochs=4, concurrency=2, mode="min")
    assert (summary.counts["stopped"], summary.counts["running"], summary.counts["pending"]) == (2, 1, 2)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_live_status_line_on_a_terminal_plain_lines_otherwise():
    plain, terminal = io.StringIO(), _Terminal()
    for stream in (plain, terminal):
        console = Console(stream)
        console.event("t1-A-r4", "started", "running 1 · done 0 | best - | ETA -")
        console.event("t1-A-r4", "finished: 2 epochs", "running 0 · done 1 | best 0.3 | ETA ~0 s", ended=True)
        console.line("leaderboard")
        console.stop_live()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].startswith("[sweep") and lines[0].endswith("started")
    assert lines[2] == INDENT + "running 0 · done 1 | best 0.3 | ETA ~0 s"  # the progress after an end
    shown = terminal.getvalue()
    assert "\r\x1b[2K" in shown and "ETA ~0 s" in shown  # drawn and erased ...
    assert max(chunk.count("[sweep") for chunk in shown.split("\r\x1b[2K")) <= 2  # an event and one live line
    screen = [line.split("\r\x1b[2K")[-1] for line in shown.split("\n")]  # what the terminal keeps
    assert screen[:2] == lines[:2] and screen[2:] == ["leaderboard", ""]  # ... never a line of its own


def test_trial_output_goes_to_the_trial_log(tmp_path, capsys):
    log = tmp_path / "trials" / "t1" / "trial.log"
    with pytest.raises(RuntimeError), trial_output(log):
        print("epoch 1 table")
        logging.getLogger("lora_train.test").warning("a warning")
        raise RuntimeError("boom")
    text = log.read_text()
    assert "epoch 1 table" in text and "a warning" in text and "RuntimeError: boom" in text
    assert "epoch 1 table" in capsys.readouterr().out  # still on the process's stdout (Ray's worker log)


def test_status_of_an_unknown_sweep_is_one_line_exit_2(tmp_path):
    proc = _status("nope", "--storage-path", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: no sweep named 'nope' in {tmp_path}"]


# ---- real sweeps ----

@pytest.fixture(scope="module")
def quiet_sweep(sweep_mlflow, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("quiet")
    proc = subprocess.run([sys.executable, str(STANDIN), *_sweep_args(tmp_path, "quiet", sweep_mlflow)],
                          capture_output=True, text=True, timeout=900, env=_env(), cwd=REPO, check=False)
    return proc, tmp_path / "store" / "quiet", sweep_mlflow


@pytest.mark.slow
def test_default_console_is_quiet(quiet_sweep, tmp_path):
    proc, sweep_dir, url = quiet_sweep
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    for line in lines:
        assert not any(word in line for word in NOISE), line

    events = [i for i, line in enumerate(lines) if line.startswith("[sweep")]
    seconds = [i for i, line in enumerate(lines) if line.startswith(INDENT)]
    assert all(i - 1 in events for i in seconds), "more than 2 lines for an event"
    header, summary = lines[:events[0]], lines[max(events + seconds) + 1:]
    assert header[-4].startswith("sweep quiet: 4 trials") and len(header) <= 6, header
    assert len(lines) - len(events) - len(seconds) == len(header) + len(summary)  # nothing else in between
    event_text = [lines[i] for i in events]
    assert sum(" started" in line for line in event_text) == 4
    failed = next(i for i in events if "failed: RuntimeError: stand-in failure for rank 13" in lines[i])
    trial_log = Path(re.search(r"log: (\S+)", lines[failed + 1]).group(1))
    assert "RuntimeError: stand-in failure for rank 13" in trial_log.read_text()  # its traceback
    assert "best val/abs_rel" in lines[events[-1] + 1]

    # the summary: leaderboard, the champion line, the links; nothing buried between them
    table = [line for line in summary if line.startswith("|")]
    assert table[0].startswith("| rank | trial |") and len(table) == 2 + 4
    assert any(line.startswith("best trial ") for line in summary)
    assert len(summary) <= len(table) + 12, summary
    tracker = SweepTracker(url, "quiet", create=False)
    assert f"  runs     {tracker.ui_url()}" in summary
    compare = ui.runs_url(url, tracker.experiment_id, ui.TOP_RUNS_VIEW, charts=True)
    assert f"  compare  {compare}" in summary
    view = json.loads(json.loads(tracker.client.get_experiment(tracker.experiment_id)
                                 .tags[ui.VIEW_TAG_PREFIX + ui.TOP_RUNS_VIEW])["state"])
    ranked = [row["run_id"] for row in json.loads((sweep_dir / "summary.json").read_text())["rows"]
              if row["best_val_abs_rel"] is not None]
    assert view["searchFilter"] == "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in ranked) + ")"
    assert (sweep_dir / "sweep_report.html").is_file()

    # what the console left out went to the logs
    driver_log = (sweep_dir / "driver.log").read_text()
    assert "Started a local Ray instance" in driver_log and "View run" not in driver_log
    assert any("Checkpoint successfully created" in p.read_text() for p in sweep_dir.glob("trials/*/trial.log"))

    # the printed address, in a fresh browser profile: the trial runs, not the GenAI overview
    names = [run.info.run_name for run in tracker.trial_runs()]
    with Browser(tmp_path / "profile") as browser:
        page = browser.open(tracker.ui_url())
        text = page.wait_for(" && ".join(f"document.body.innerText.includes('{n}')" for n in names)
                             + " && document.body.innerText")
    assert "4 matching runs" in text and "Overview" not in text


@pytest.mark.slow
def test_verbose_console_and_status_while_running_and_after(sweep_mlflow, tmp_path):
    args = _sweep_args(tmp_path, "loud", sweep_mlflow)
    storage = str(tmp_path / "store")
    log = tmp_path / "loud.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(STANDIN), *args, "--verbose"], stdout=out,
                                stderr=subprocess.STDOUT, env=_env(STANDIN_EPOCH_S="3"), cwd=REPO)
    try:
        deadline, running = time.time() + 600, None
        while time.time() < deadline and proc.poll() is None:
            if " epoch 1: " in log.read_text():
                status = _status("loud", "--storage-path", storage)
                if status.returncode == 0 and "running 0 " not in status.stdout and "sweep loud: running" in status.stdout:
                    running = status.stdout.splitlines()
                    break
            time.sleep(1)
        assert running, log.read_text()[-3000:]
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert "(train_driver pid=" in output  # the trials' own output, forwarded by Ray
    assert "View run" in output  # MLflow's links, as without the console

    assert f"(driver pid {proc.pid} on " in running[0] and "ETA" in running[1] and "best val/abs_rel" in running[1]
    assert running[-1].startswith("  MLflow   http") and "viewStateShareKey=sweep-trials" in running[-1]

    finished = _status("loud", "--storage-path", storage)
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert lines[0].startswith("sweep loud: finished in "), lines
    assert "running 0" in lines[1] and re.search(r"failed [1-9]", lines[1]) and "pending" not in lines[1] and "ETA" not in lines[1]
    assert any(line.startswith("  report   ") for line in lines)
