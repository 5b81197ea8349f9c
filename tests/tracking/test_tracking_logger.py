"""MetricLogger against the session's real server: batch limits, rejected params, bad input."""

import pytest
from mlflow import MlflowClient

from tracking.errors import TrackingError
from tracking.logger import MetricLogger
from tracking.runs import SweepTracker


@pytest.fixture
def trial_run(mlflow_server, unique_name):
    tracker = SweepTracker(mlflow_server, unique_name)
    tracker.open_parent(unique_name, {}, "{}\n")
    return tracker.open_trial("t", {"optim": {"lr": 1e-4}})


def test_more_than_one_batch_of_everything_arrives(mlflow_server, trial_run, tmp_path):
    logger = MetricLogger(mlflow_server, trial_run, tmp_path / "spool.jsonl", send_interval=5.0)
    logger.log_metrics({f"m/{i}": float(i) for i in range(2500)}, step=0)  # > 1000 metrics per call
    logger.log_params({"p": {str(i): i for i in range(250)}})  # > 100 params per call
    logger.set_tags({f"tag.{i}": "x" * (i + 1) for i in range(130)})  # > 100 tags per call
    assert logger.flush(timeout=60)
    logger.close()
    assert logger.requests_sent >= 3
    run = MlflowClient(mlflow_server).get_run(trial_run)
    assert len([k for k in run.data.metrics if k.startswith("m/")]) == 2500
    assert run.data.metrics["m/2499"] == 2499.0
    assert len([k for k in run.data.params if k.startswith("p.")]) == 250
    assert run.data.tags["tag.129"] == "x" * 130


def test_a_rejected_param_does_not_lose_the_metrics(mlflow_server, trial_run, tmp_path, caplog):
    logger = MetricLogger(mlflow_server, trial_run, tmp_path / "spool.jsonl", best={"val/delta1": "max"})
    # optim.lr is already logged as 0.0001 (params are write-once); the other params must still land
    logger.log_params({"optim": {"lr": 0.5, "weight_decay": 0.01}, "lora": {"rank": 8}})
    logger.log_metrics({"val/delta1": 0.7, "nan_metric": float("nan"), "bad": "text"}, step=0)
    logger.log_metrics({"val/delta1": 0.6}, step=1)
    assert logger.flush(timeout=60)
    logger.close()
    run = MlflowClient(mlflow_server).get_run(trial_run)
    assert run.data.params["optim.lr"] == "0.0001"
    assert run.data.params["optim.weight_decay"] == "0.01" and run.data.params["lora.rank"] == "8"
    assert run.data.metrics["val/delta1"] == 0.6 and run.data.metrics["best/val_delta1"] == 0.7
    assert run.data.metrics["nan_metric"] != run.data.metrics["nan_metric"]  # NaN arrives as NaN
    assert "rejected params" in caplog.text and "non-numeric" in caplog.text
    assert not (tmp_path / "spool.jsonl").exists()


def test_bad_logger_arguments_are_user_errors(mlflow_server, tmp_path):
    with pytest.raises(TrackingError, match="best mode for 'val/abs_rel' is 'lowest'"):
        MetricLogger(mlflow_server, "run", tmp_path / "s.jsonl", best={"val/abs_rel": "lowest"})
    with pytest.raises(TrackingError, match="not an MLflow server address"):
        MetricLogger("127.0.0.1:5000", "run", tmp_path / "s.jsonl")
