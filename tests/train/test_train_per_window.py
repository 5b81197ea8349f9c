"""Per-window and per-scene results of a real tiny evaluation, their intervals and the paired
comparison in `metrics.json`."""

import json
import math

import numpy as np
import pytest

from lora_train.builders import build_datasets, build_model
from lora_train.evaluate import evaluate_checkpoint, evaluate_model
from lora_train.train import run_training
from sweeps.selection import ConfirmRun

VAL_SCENES = ["facade_000", "facade_001"]


def test_per_window_results_carry_scenes_and_average_to_the_reported_means(small_config, tmp_path):
    trained = run_training(small_config(**{"train.epochs": 1, "train.steps_per_epoch": 1,
                                           "eval.scenes": VAL_SCENES}))
    config = small_config(**{"eval.scenes": VAL_SCENES, "eval.max_windows": 5})  # of 2 x 6
    report = evaluate_checkpoint(config, trained.last_checkpoint, compare_base=True, out_dir=tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()).keys() == report.keys()

    per_window, results = report["per_window"], report["results"]
    identities = [(w["scene"], w["key_view"], tuple(w["companion_views"])) for w in per_window["base"]]
    assert identities == [(w["scene"], w["key_view"], tuple(w["companion_views"])) for w in per_window["adapter"]]
    assert len(set(identities)) == len(identities) == report["num_windows"] == 5
    assert {scene for scene, _, _ in identities} == set(VAL_SCENES)
    assert all(len(views) == config.data.num_views - 1 and key not in views for _, key, views in identities)

    for label in ("base", "adapter"):
        windows, means = per_window[label], results[label]
        for key in ("abs_rel", "delta1", "rra30", "loss"):
            assert means[key] == pytest.approx(np.nanmean([w[key] for w in windows]), rel=1e-12), (label, key)
        assert means["num_scenes"] == len(VAL_SCENES)
        assert means["abs_rel_ci_low"] < means["abs_rel"] < means["abs_rel_ci_high"]
        scenes = report["per_scene"][label]
        assert list(scenes) == VAL_SCENES
        assert sum(s["num_windows"] for s in scenes.values()) == len(windows)
        for scene, scene_means in scenes.items():
            values = [w["abs_rel"] for w in windows if w["scene"] == scene]
            assert scene_means["abs_rel"] == pytest.approx(np.mean(values))

    comparison = report["comparison"]
    assert comparison["abs_rel_delta"] == pytest.approx(results["adapter"]["abs_rel"] - results["base"]["abs_rel"])
    assert comparison["abs_rel_delta_ci_low"] <= comparison["abs_rel_delta"] <= comparison["abs_rel_delta_ci_high"]
    assert (comparison["num_scenes"], comparison["num_windows"]) == (len(VAL_SCENES), report["num_windows"])
    assert "adapter - base (paired)" in (tmp_path / "eval" / "metrics.txt").read_text()
    confirm = ConfirmRun.from_report(report)  # what the sweep's confirm phase reads
    np.testing.assert_allclose(confirm.adapter.values - confirm.base.values,
                               [a["abs_rel"] - b["abs_rel"] for a, b in zip(per_window["adapter"], per_window["base"])])

    # evaluate_model (the training loop's validation) still returns the same means
    _, val_set = build_datasets(config)
    means = evaluate_model(build_model(config, base_only=True), val_set, config.eval.align)
    for key, value in means.items():
        assert value == pytest.approx(results["base"][key], rel=1e-6) or math.isnan(value), key
