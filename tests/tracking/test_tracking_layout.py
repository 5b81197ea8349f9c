"""The run layout on a real MLflow server: a parent with N trial children, every param, metric and
artifact of the contract present, idempotent trials across restarts, leaderboard and compare CLI."""

import json
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from tests.plugins.mlflow_fixtures import make_toy_adapter
from tracking.compare import build_leaderboard, write_leaderboard
from tracking.compare import main as compare_main
from tracking.errors import TrackingError
from tracking.logger import MetricLogger
from tracking.runs import SweepTracker

SPACE = {
    "lora": {"strategy": {"choices": ["both_attn", "frame_attn"]}, "rank": {"choices": [4, 8, 16]}},
    "optim": {"lr": {"low": 1e-5, "high": 5e-4, "log": True}},
}
SPACE_YAML = yaml.safe_dump(SPACE)
TRAIN_TERMS = ["camera", "T", "R", "FL", "conf_depth", "reg_depth", "grad_depth"]
# trial id, strategy, rank, lr, val AbsRel per epoch, terminal status, stop reason
TRIALS = [
    ("t0", "both_attn", 8, 2e-4, [0.30, 0.22, 0.25], "completed", ""),
    ("t1", "frame_attn", 4, 1e-4, [0.28, 0.18, 0.17], "completed", ""),
    ("t2", "both_attn", 16, 5e-5, [0.40], "early_stopped", "asha: below rung 1 cutoff"),
]
STEPS_PER_EPOCH = 20
PARAM_KEYS = {"lora.strategy", "lora.rank", "lora.alpha", "lora.dropout", "lora.targets", "optim.lr",
              "optim.weight_decay", "lora.trainable_params"}
METRIC_KEYS = {"train/loss", *(f"train/{t}" for t in TRAIN_TERMS), "train/lr", "time/step_s", "val/abs_rel",
               "val/delta1", "val/tau103", "val/loss", "best/val_abs_rel", "cost/cpu_seconds", "cost/peak_mem_mb",
               "epoch"}
ARTIFACTS = {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "eval/metrics.json",
             "eval/visualizations/depth_000.png", "config.yaml"}


def trial_config(strategy, rank, lr):
    return {"lora": {"strategy": strategy, "rank": rank, "alpha": 2 * rank, "dropout": 0.05,
                     "targets": ["qkv", "proj"]},
            "optim": {"lr": lr, "weight_decay": 0.01}}


def run_trial(uri, tracker, trial, work: Path, epochs=None):
    """What a trial does (rank 0): open its run, log per step / per epoch, upload adapter + eval."""
    trial_id, strategy, rank, lr, curve, status, reason = trial
    config = trial_config(strategy, rank, lr)
    run_id = tracker.open_trial(trial_id, config, run_name=f"{strategy}-r{rank}-{trial_id}")
    peft_model, _, adapter_dir = make_toy_adapter(work / trial_id, rank=rank)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    logger = MetricLogger(uri, run_id, work / trial_id / "spool.jsonl", best={"val/abs_rel": "min"},
                          send_interval=0.2)
    logger.log_params({"lora": {"trainable_params": trainable}})
    (work / trial_id / "config.yaml").write_text(yaml.safe_dump(config))
    logger.log_artifact(work / trial_id / "config.yaml")
    eval_dir = work / trial_id / "eval"
    (eval_dir / "visualizations").mkdir(parents=True, exist_ok=True)
    for epoch, abs_rel in enumerate(curve[:epochs] if epochs else curve):
        for i in range(STEPS_PER_EPOCH):
            step = epoch * STEPS_PER_EPOCH + i
            terms = {f"train/{t}": 0.1 / (step + 1) for t in TRAIN_TERMS}
            logger.log_metrics({"train/loss": 1.0 / (step + 1), **terms, "train/lr": lr, "time/step_s": 0.01}, step)
        val = {"val/abs_rel": abs_rel, "val/delta1": 1 - abs_rel, "val/tau103": 0.5 - abs_rel / 2,
               "val/loss": 2 * abs_rel}
        logger.log_metrics({**val, "cost/cpu_seconds": 10.0 * (epoch + 1) * rank, "cost/peak_mem_mb": 100.0 + rank,
                            "epoch": epoch}, step=epoch)
        logger.log_artifacts(adapter_dir, "adapter")
        (eval_dir / "metrics.json").write_text(json.dumps({"epoch": epoch, **val}))
        _write_png(eval_dir / "visualizations" / "depth_000.png")
        logger.log_artifacts(eval_dir, "eval")
        assert logger.flush(timeout=60), "server is up: every epoch must reach it"
    if status == "completed":
        logger.close()
    # else: the trial process was killed by ASHA after its last flush; the driver closes the run
    tracker.close_trial(run_id, status, reason)
    return run_id, adapter_dir


def _write_png(path: Path):
    import numpy as np
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, np.random.default_rng(0).random((8, 8)))


@pytest.fixture(scope="module")
def sweep(mlflow_server, tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    name = f"layout-{work.name}"
    tracker = SweepTracker(mlflow_server, name)
    parent = tracker.open_parent(name, SPACE, SPACE_YAML)
    runs, adapters = {}, {}
    for trial in TRIALS:
        runs[trial[0]], adapters[trial[0]] = run_trial(mlflow_server, tracker, trial, work)
    return SimpleNamespace(uri=mlflow_server, name=name, tracker=tracker, parent=parent, runs=runs,
                           adapters=adapters, work=work, client=MlflowClient(mlflow_server))


def test_parent_holds_the_space_and_children_are_nested(sweep):
    parent = sweep.client.get_run(sweep.parent)
    assert parent.data.tags["sweep.role"] == "parent"
    assert parent.data.params["space.lora.rank.choices"] == "4,8,16"
    assert parent.data.params["space.optim.lr.log"] == "True"
    path = sweep.client.download_artifacts(sweep.parent, "space.yaml", str(sweep.work / "dl-space"))
    assert yaml.safe_load(Path(path).read_text()) == SPACE
    children = sweep.tracker.trial_runs()
    assert sorted(r.info.run_id for r in children) == sorted(sweep.runs.values())
    for run in children:
        assert run.data.tags["sweep.role"] == "trial"
        assert run.data.tags["mlflow.parentRunId"] == sweep.parent
        assert sweep.runs[run.data.tags["ray.trial_id"]] == run.info.run_id


def test_every_param_metric_and_artifact_of_the_contract_is_present(sweep):
    for trial_id, strategy, rank, lr, curve, _, _ in TRIALS:
        run = sweep.client.get_run(sweep.runs[trial_id])
        assert PARAM_KEYS <= set(run.data.params)
        assert run.data.params["lora.targets"] == "qkv,proj"
        assert float(run.data.params["optim.lr"]) == lr and run.data.params["lora.rank"] == str(rank)
        assert int(run.data.params["lora.trainable_params"]) > 0
        assert METRIC_KEYS <= set(run.data.metrics)

        history = sweep.client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(len(curve) * STEPS_PER_EPOCH))
        val = [m.value for m in sorted(sweep.client.get_metric_history(run.info.run_id, "val/abs_rel"),
                                       key=lambda m: m.step)]
        best = [m.value for m in sorted(sweep.client.get_metric_history(run.info.run_id, "best/val_abs_rel"),
                                        key=lambda m: m.step)]
        assert val == pytest.approx(curve)
        assert best == pytest.approx([min(curve[: i + 1]) for i in range(len(curve))])
        assert run.data.metrics["best/val_abs_rel"] == pytest.approx(min(curve))

        assert ARTIFACTS <= _artifact_paths(sweep.client, run.info.run_id)
        local = sweep.client.download_artifacts(run.info.run_id, "adapter", str(sweep.work / f"dl-{trial_id}"))
        weights = load_file(Path(local) / "adapter_model.safetensors")
        assert any("lora_A" in k for k in weights) and any("lora_B" in k for k in weights)
        assert json.loads((Path(local) / "adapter_config.json").read_text())["r"] == rank


def test_terminal_status_tags_and_run_states(sweep):
    expected = {"completed": "FINISHED", "early_stopped": "KILLED"}
    for trial_id, *_, status, reason in TRIALS:
        run = sweep.client.get_run(sweep.runs[trial_id])
        assert run.data.tags["trial.status"] == status
        assert run.data.tags["trial.stop_reason"] == reason
        assert run.info.status == expected[status]
    with pytest.raises(TrackingError, match="not one of"):
        sweep.tracker.close_trial(sweep.runs["t0"], "stopped")


def test_restarted_driver_and_trial_reuse_their_runs(sweep):
    tracker = SweepTracker(sweep.uri, sweep.name)  # a fresh driver process, nothing in memory
    assert tracker.open_parent(sweep.name, SPACE, SPACE_YAML) == sweep.parent
    trial = ("t1", "frame_attn", 4, 1e-4, [0.28, 0.18, 0.17], "completed", "")
    run_id, _ = run_trial(sweep.uri, tracker, trial, sweep.work / "restart", epochs=1)
    assert run_id == sweep.runs["t1"]
    assert sweep.client.get_run(run_id).data.tags["trial.status"] == "completed"  # closed again
    runs = tracker.trial_runs()
    assert len(runs) == len(TRIALS)
    assert [r.data.tags["ray.trial_id"] for r in runs].count("t1") == 1
    # best/val_abs_rel continues from the run's best (0.17), it does not restart at 0.28
    assert sweep.client.get_run(run_id).data.metrics["best/val_abs_rel"] == pytest.approx(0.17)
    # A resumed trial (Tune restore) reopens its run: RUNNING again, no stale terminal status.
    t2 = tracker.open_trial("t2", {})
    reopened = sweep.client.get_run(t2)
    assert t2 == sweep.runs["t2"] and reopened.info.status == "RUNNING"
    assert "trial.status" not in reopened.data.tags and "trial.stop_reason" not in reopened.data.tags
    tracker.close_trial(t2, "early_stopped", "asha: below rung 1 cutoff")
    with pytest.raises(TrackingError, match="different search space"):
        tracker.open_parent(sweep.name, {**SPACE, "optim": {"lr": {"low": 1e-6}}}, SPACE_YAML)


def test_racing_openers_of_one_trial_get_one_run(sweep):
    ids = []

    def open_it():
        ids.append(SweepTracker(sweep.uri, sweep.name, parent_run_id=sweep.parent).open_trial("t-race", {"x": 1}))

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    active = [r for r in sweep.tracker.trial_runs() if r.data.tags["ray.trial_id"] == "t-race"]
    assert [r.info.run_id for r in active] == ids[:1]
    sweep.tracker.close_trial(ids[0], "failed", "test cleanup")


def test_leaderboard_finish_parent_and_compare_cli(sweep):
    rows = [r for r in build_leaderboard(sweep.tracker) if r["trial_id"] in sweep.runs]
    assert [r["trial_id"] for r in rows] == ["t1", "t0", "t2"]  # by best val AbsRel
    assert rows[0]["best_val_abs_rel"] == pytest.approx(0.17) and rows[0]["delta1"] == pytest.approx(0.83)
    assert rows[0]["strategy"] == "frame_attn" and rows[0]["lora_rank"] == 4 and rows[0]["lr"] == 1e-4
    assert rows[2]["status"] == "early_stopped" and rows[0]["cost_unit"] == "cpu_s"
    csv_path, md_path = write_leaderboard(rows, sweep.work / "board")
    assert csv_path.read_text().count("\n") == 1 + len(rows)

    sweep.tracker.finish_parent(rows[0]["run_id"], {"val/abs_rel": rows[0]["best_val_abs_rel"]}, [csv_path, md_path])
    parent = sweep.client.get_run(sweep.parent)
    assert parent.data.tags["best.run_id"] == sweep.runs["t1"]
    assert parent.data.metrics["best/val_abs_rel"] == pytest.approx(0.17)
    assert parent.info.status == "FINISHED"

    out = sweep.work / "compare"
    proc = subprocess.run([sys.executable, "-m", "tracking.compare", "--experiment", sweep.name,
                           "--tracking-uri", sweep.uri, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for trial_id, strategy, rank, *_ in TRIALS:
        assert f"{strategy}-r{rank}-{trial_id}" in proc.stdout
    assert "best val AbsRel" in proc.stdout and "| 1 | frame_attn-r4-t1 |" in proc.stdout
    pngs = ["val_abs_rel_curves.png", "pareto_trainable_params.png", "pareto_cost.png"]
    for name in ["leaderboard.csv", "leaderboard.md", *pngs]:
        assert (out / name).stat().st_size > 0
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"leaderboard/leaderboard.csv", "leaderboard/leaderboard.md",
            *(f"comparison/{n}" for n in pngs)} <= _artifact_paths(sweep.client, sweep.parent)
    print(f"comparison plots: {out}")


def test_compare_cli_rejects_unknown_experiment(mlflow_server, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare_main(["--experiment", "no-such-sweep", "--tracking-uri", mlflow_server])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: experiment 'no-such-sweep' not found on {mlflow_server}\n"


def _artifact_paths(client, run_id, path=None) -> set:
    paths = set()
    for info in client.list_artifacts(run_id, path):
        paths |= _artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return paths


def test_unreachable_server_fails_fast_with_one_line(capsys):
    from tracking.server import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match=f"MLflow server {dead} is not reachable"):
        SweepTracker(dead, "any")
    with pytest.raises(SystemExit) as exit_info:
        compare_main(["--experiment", "x", "--tracking-uri", dead])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: MLflow server {dead} is not reachable (GET /health failed)\n"
