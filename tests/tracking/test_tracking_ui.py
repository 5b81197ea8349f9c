"""What the MLflow UI shows a fresh browser profile (headless Debian `chromium`, driven over the
DevTools protocol): the sweep's runs table, the compare view of the top runs, the sweep report.

Screenshots go to the test's tmp folder; with `UI_SCREENSHOTS_DIR=docs` they are also copied
there as ui-runs.png, ui-compare.png and ui-report.png (the README's pictures).
"""

import os
import re
import shutil
import time
from types import SimpleNamespace

import pytest

from tests.plugins.chromium import Browser
from tracking import ui
from tracking.compare import build_leaderboard, write_plots
from tracking.report import write_report
from tracking.runs import SweepTracker

# (trial id, strategy, rank, lr, val/abs_rel per epoch, trial.status)
TRIALS = [
    ("3f2a9c1e", "B", 8, 1.0e-3, [0.36, 0.31, 0.29, 0.27], "completed"),
    ("7c41d0b2", "B", 6, 6.0e-4, [0.38, 0.33, 0.30, 0.28], "completed"),
    ("a9e03f57", "C", 12, 2.0e-3, [0.37, 0.34], "early_stopped"),
    ("0d6b8e21", "A", 4, 3.0e-4, [0.45], "early_stopped"),
    ("e58c2a90", "C", 16, 8.0e-3, [0.52], "early_stopped"),
]
PARAMS = ["lora.strategy", "lora.rank", "optim.lr", "lora.trainable_params"]
CHAMPION = {"champion.decision": "promoted", "champion.delta_vs_base": "-0.0412",
            "champion.delta_vs_base_ci_low": "-0.0533", "champion.delta_vs_base_ci_high": "-0.0297",
            "champion.confidence": "0.975", "champion.num_scenes": "6", "champion.num_windows": "24",
            "champion.reason": "adapter - base AbsRel -0.0412 [-0.0533, -0.0297] lies below 0; first champion"}
TOP = 3
ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'  # the side panel, for the pictures


def _picture(page, path, ready: str):
    """A screenshot without the assistant's side panel, once `ready` holds again (the page redraws)."""
    page.click(ASSISTANT_CLOSE)
    time.sleep(0.5)
    page.wait_for(ready)
    time.sleep(1.0)
    page.screenshot(path)
    target = os.environ.get("UI_SCREENSHOTS_DIR")
    if target:
        shutil.copy(path, os.path.join(target, path.name))
    print(f"screenshot: {path}")


@pytest.fixture(scope="module")
def sweep(mlflow_server, tmp_path_factory):
    """A finished sweep as the driver leaves it in MLflow (no Ray): parent with the champion
    decision, one run per trial (train/lr logged first, as trials do), report, top-runs view."""
    name = f"ui-sweep-{os.getpid()}"
    out = tmp_path_factory.mktemp("ui-sweep")
    tracker = SweepTracker(mlflow_server, name)
    tracker.open_parent(name, {"lora": {"rank": {"low": 4, "high": 16}}}, "lora: {rank: {low: 4, high: 16}}\n")
    for trial_id, strategy, rank, lr, curve, status in TRIALS:
        run_id = tracker.open_trial(trial_id, {"lora": {"strategy": strategy, "rank": rank, "trainable_params":
                                                        12384 * rank}, "optim": {"lr": lr}},
                                    run_name=f"{trial_id}-{strategy}-r{rank}")
        tracker.client.log_metric(run_id, "train/lr", lr, step=1)
        for epoch, value in enumerate(curve, 1):
            tracker.client.log_metric(run_id, "val/abs_rel", value, step=epoch)
        tracker.client.log_metric(run_id, "best/val_abs_rel", min(curve))
        tracker.close_trial(run_id, status)
    tracker.client.set_tag(tracker.parent_run_id, "sweep.name", name)
    for key, value in CHAMPION.items():
        tracker.client.set_tag(tracker.parent_run_id, key, value)
    rows = build_leaderboard(tracker)
    write_plots(rows, out)
    report = write_report(tracker, rows, out)
    top = [row["run_id"] for row in rows[:TOP]]
    ui.save_top_runs_view(tracker.client, tracker.experiment_id, top, PARAMS, "best/val_abs_rel")
    tracker.client.set_terminated(tracker.parent_run_id)
    return SimpleNamespace(tracker=tracker, rows=rows, report=report, top=top)


def test_runs_address_shows_the_trials_with_their_columns(sweep, tmp_path):
    names = [row["run_name"] for row in sweep.rows]
    with Browser(tmp_path / "profile") as browser:
        page = browser.open(sweep.tracker.ui_url())
        page.wait_for(f"document.body.innerText.includes('{len(names)} matching runs')")
        page.wait_for("document.body.innerText.includes('trial.status')")
        text = page.text()
        _picture(page, tmp_path / "ui-runs.png", "document.body.innerText.includes('trial.status')")
    assert "Overview" not in text and "Observability" not in text, text[:2000]  # not the GenAI pages
    for column in ("best/val_abs_rel", "lora.strategy", "lora.rank", "lora.trainable_params", "optim.lr",
                   "trial.status"):
        assert column in text, f"column {column} not shown: {text[:2000]}"
    positions = [text.index(name) for name in names]
    assert positions == sorted(positions), "not sorted by best/val_abs_rel ascending"
    assert "early_stopped" in text and "completed" in text


def test_bare_experiment_address_opens_genai_overview_on_a_fresh_profile(sweep, tmp_path):
    """Why every address carries `workflowType=machine_learning`: MLflow 3.17 ignores the
    experiment-kind tag for this and opens the GenAI overview."""
    tracker = sweep.tracker
    assert tracker.client.get_experiment(tracker.experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    with Browser(tmp_path / "profile") as browser:
        page = browser.open(f"{tracker.tracking_uri}/#/experiments/{tracker.experiment_id}")
        text = page.wait_for("document.body.innerText.includes('Traces') && document.body.innerText")
    assert "Overview" in text and "matching runs" not in text, text[:2000]


def test_compare_link_shows_parallel_coordinates_of_the_top_runs(sweep, tmp_path):
    tracker = sweep.tracker
    url = ui.runs_url(tracker.tracking_uri, tracker.experiment_id, ui.TOP_RUNS_VIEW, charts=True)
    label_js = "Array.from(document.querySelectorAll('g.dimension text.label')).map(e => e.textContent)"
    with Browser(tmp_path / "profile") as browser:
        page = browser.open(url)
        labels = page.wait_for(f"(() => {{ const l = {label_js}; return l.length ? l : null }})()")
        text = page.text()
        _picture(page, tmp_path / "ui-compare.png", f"{label_js}.length > 0")
    assert "Parallel Coordinates" in text
    assert len(labels) == len(PARAMS) + 1, labels
    assert labels[:3] == PARAMS[:3] and labels[-1].startswith("best/"), labels
    assert f"{TOP} matching runs" in text
    for row in sweep.rows:
        assert (row["run_name"] in text) == (row["run_id"] in sweep.top), row["run_name"]


def test_report_artifact_renders_in_the_artifact_viewer(sweep, tmp_path):
    tracker = sweep.tracker
    html = sweep.report.read_text()
    assert not re.search(r"<(script|link|iframe)\b|\bsrc=['\"](?!data:)", html)  # nothing fetched
    url = ui.artifact_url(tracker.tracking_uri, tracker.experiment_id, tracker.parent_run_id, sweep.report.name)
    with Browser(tmp_path / "profile", height=1400) as browser:
        page = browser.open(url)
        page.wait_for("document.querySelector('iframe.mlflow-html-iframe') !== null")
        frame = page.wait_for_frame("blob:")
        text = frame.wait_for("document.body && document.body.innerText.includes('Leaderboard') "
                              "&& document.body.innerText")
        images = frame.wait_for("(() => { const i = Array.from(document.images); "
                                "return i.length && i.every(x => x.complete && x.naturalWidth > 0) ? i.length : 0 })()")
        links = frame.evaluate("Array.from(document.querySelectorAll('a')).map(a => a.href)")
        _picture(page, tmp_path / "ui-report.png", "document.querySelector('iframe.mlflow-html-iframe') !== null")
    assert "decision: promoted" in text and "-0.0412 [-0.0533, -0.0297]" in text
    for row in sweep.rows:
        assert row["run_name"] in text
        assert ui.run_url(tracker.tracking_uri, tracker.experiment_id, row["run_id"]) in links
    assert images >= 3  # learning curves and the two Pareto plots
