"""Dotted params, MLflow batch limits, Pareto front: pure functions, no server."""

import pytest

from tracking.compare import pareto_front
from tracking.errors import TrackingError
from tracking.params import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VALUE_LENGTH,
    MAX_PARAMS_PER_BATCH,
    MAX_TAGS_PER_BATCH,
    batches,
    best_metric_name,
    flatten_params,
)
from tracking.server import validate_tracking_uri


def test_flatten_params_dotted_names_and_string_values():
    config = {"lora": {"strategy": "both_attn", "rank": 8, "alpha": 16.0, "dropout": 0.05,
                       "targets": ["qkv", "proj"], "use_dora": False},
              "optim": {"lr": 1e-4, "weight_decay": 0.0, "betas": [0.9, 0.999]},
              "data": {"scenes": {"train": ["facade"]}, "empty": {}}, "seed": None}
    flat = flatten_params(config)
    assert flat == {
        "lora.strategy": "both_attn", "lora.rank": "8", "lora.alpha": "16.0", "lora.dropout": "0.05",
        "lora.targets": "qkv,proj", "lora.use_dora": "False",
        "optim.lr": "0.0001", "optim.weight_decay": "0.0", "optim.betas": "0.9,0.999",
        "data.scenes.train": "facade", "data.empty": "{}", "seed": "None",
    }


def test_long_param_values_are_truncated_to_the_mlflow_limit(caplog):
    flat = flatten_params({"lora": {"targets": ["blocks.%d.attn.qkv" % i for i in range(2000)]}})
    assert len(flat["lora.targets"]) == MAX_PARAM_VALUE_LENGTH
    assert flat["lora.targets"].endswith("...")
    assert "truncated" in caplog.text


def test_batches_respect_every_log_batch_limit():
    metrics, params, tags = list(range(2500)), list(range(250)), list(range(130))
    out = list(batches(metrics, params, tags))
    for m, p, t in out:
        assert len(m) <= MAX_METRICS_PER_BATCH and len(p) <= MAX_PARAMS_PER_BATCH and len(t) <= MAX_TAGS_PER_BATCH
        assert len(m) + len(p) + len(t) <= 1000
    assert [x for m, _, _ in out for x in m] == metrics
    assert [x for _, p, _ in out for x in p] == params
    assert [x for _, _, t in out for x in t] == tags


def test_best_metric_name():
    assert best_metric_name("val/abs_rel") == "best/val_abs_rel"
    assert best_metric_name("best/val_abs_rel") == "best/val_abs_rel"


def test_pareto_front_keeps_only_non_dominated_points():
    points = [(100, 0.30), (200, 0.20), (150, 0.35), (400, 0.21), (800, 0.10), (50, 0.5)]
    assert pareto_front(points) == [(50, 0.5), (100, 0.30), (200, 0.20), (800, 0.10)]


@pytest.mark.parametrize("uri", ["localhost:5000", "sqlite:///x.db", "", "http://"])
def test_tracking_uri_must_be_a_server_address(uri):
    with pytest.raises(TrackingError, match="not an MLflow server address"):
        validate_tracking_uri(uri)
