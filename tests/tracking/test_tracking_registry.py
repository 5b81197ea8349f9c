"""Model registry: the winning adapter as a pyfunc (base weights + adapter), alias `champion`."""

import os

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from tests.plugins.mlflow_fixtures import make_toy_adapter, toy_adapter_pyfunc
from tracking.errors import TrackingError
from tracking.runs import SweepTracker, tracking_uri_set_to


def test_champion_alias_points_at_a_loadable_pyfunc(mlflow_server, tmp_path, unique_name):
    tracker = SweepTracker(mlflow_server, unique_name)
    tracker.open_parent(unique_name, {}, "{}\n")
    run_id = tracker.open_trial("t-best", {"lora": {"rank": 4}})
    tracker.close_trial(run_id, "early_stopped", "asha")
    peft_model, base_path, adapter_dir = make_toy_adapter(tmp_path, rank=4)

    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    version = tracker.register_champion(run_id, unique_name, toy_adapter_pyfunc(),
                                        {"base": str(base_path), "adapter": str(adapter_dir)})
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before  # nothing leaks into the environment
    client = MlflowClient(mlflow_server)
    champion = client.get_model_version_by_alias(unique_name, "champion")
    assert int(champion.version) == version == 1
    assert champion.run_id == run_id
    assert client.get_run(run_id).info.status == "KILLED"  # logging the model kept the run's status

    with tracking_uri_set_to(mlflow_server):
        loaded = mlflow.pyfunc.load_model(f"models:/{unique_name}@champion")
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    with torch.no_grad():
        expected = peft_model(torch.from_numpy(x)).numpy()
        base_only = peft_model.get_base_model()
        with peft_model.disable_adapter():
            without_adapter = base_only(torch.from_numpy(x)).numpy()
    predicted = np.asarray(loaded.predict(x.tolist()), dtype=np.float32)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(predicted, without_adapter, atol=1e-4), "the adapter must change the output"

    # The same run again: the same version (idempotent). Another run: version 2 takes the alias.
    artifacts = {"base": str(base_path), "adapter": str(adapter_dir)}
    assert tracker.register_champion(run_id, unique_name, toy_adapter_pyfunc(), artifacts) == 1
    other_run = tracker.open_trial("t1", {"x": 2})
    assert tracker.register_champion(other_run, unique_name, toy_adapter_pyfunc(), artifacts) == 2
    assert client.get_model_version_by_alias(unique_name, "champion").version == "2"
    assert len(client.search_model_versions(f"name = '{unique_name}'")) == 2


def test_register_champion_rejects_missing_artifacts(mlflow_server, tmp_path, unique_name):
    tracker = SweepTracker(mlflow_server, unique_name)
    tracker.open_parent(unique_name, {}, "{}\n")
    run_id = tracker.open_trial("t", {})
    with pytest.raises(TrackingError, match="model artifact 'adapter' not found"):
        tracker.register_champion(run_id, unique_name, toy_adapter_pyfunc(), {"adapter": str(tmp_path / "nope")})
