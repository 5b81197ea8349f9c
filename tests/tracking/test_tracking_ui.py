"""The MLflow UI in headless Chromium (Debian's `chromium`) shows the sweep's trial runs."""

import re
import shutil
import subprocess

import pytest

from tracking.runs import SweepTracker

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900"]


def test_ui_lists_the_trial_runs(mlflow_server, tmp_path, unique_name):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium)", pytrace=False)
    tracker = SweepTracker(mlflow_server, unique_name)
    tracker.open_parent(unique_name, {"lora": {"rank": {"choices": [4, 8]}}}, "lora: {rank: {choices: [4, 8]}}\n")
    names = [f"ui-trial-{i}-r{4 * (i + 1)}" for i in range(3)]
    for i, name in enumerate(names):
        run_id = tracker.open_trial(f"t{i}", {"lora": {"rank": 4 * (i + 1)}}, run_name=name)
        tracker.client.log_metric(run_id, "best/val_abs_rel", 0.3 - 0.05 * i)
        tracker.close_trial(run_id, "completed")

    screenshot = tmp_path / "mlflow-ui.png"
    proc = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
         f"--screenshot={screenshot}", "--dump-dom", tracker.ui_url()],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style).*?</\1>", "", proc.stdout, flags=re.S)).split())
    assert unique_name in text, text[:2000]
    for name in names:
        assert name in text, f"{name} not on the page: {text[:2000]}"
    assert f"{len(names)} matching runs" in text
    # sorted by best/val_abs_rel ascending: trial 2 (0.20) first, trial 0 (0.30) last
    assert text.index(names[2]) < text.index(names[1]) < text.index(names[0])
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"MLflow UI screenshot: {screenshot}")
