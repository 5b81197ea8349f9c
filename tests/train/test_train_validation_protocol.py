"""One yardstick: the validation windows follow the validation protocol alone."""

import json

from lora_train.builders import build_datasets
from lora_train.evaluate import VALIDATION_FILE, evaluate_checkpoint
from lora_train.train import run_training


def describe(config):
    return build_datasets(config)[1].describe()


def test_windows_depend_on_the_protocol_only(small_config):
    protocol = {"eval.num_views": 2, "eval.width": 56}
    a = describe(small_config(**protocol, **{"data.num_views": 2, "data.width": 70, "train.seed": 1}))
    b = describe(small_config(**protocol, **{"data.num_views": 3, "data.width": 56, "train.seed": 99}))
    assert a == b and a["num_views"] == 2 and a["width"] == 56
    assert all(len(views) == 2 for _, views in a["windows"])
    other_views = describe(small_config(**{**protocol, "eval.num_views": 3}))
    other_width = describe(small_config(**{**protocol, "eval.width": 70}))
    assert len({a["windows_hash"], other_views["windows_hash"], other_width["windows_hash"]}) == 3


def test_eval_keys_default_to_the_training_ones(small_config):
    record = describe(small_config(**{"data.num_views": 3, "data.width": 70, "eval.max_windows": None}))
    assert record["num_views"] == 3 and record["width"] == 70


def test_max_windows_draws_a_seeded_subset(small_config):
    everything = describe(small_config(**{"eval.max_windows": None}))
    assert everything["num_windows"] >= 3
    first = describe(small_config(**{"eval.max_windows": 2, "eval.seed": 0}))
    again = describe(small_config(**{"eval.max_windows": 2, "eval.seed": 0, "train.seed": 5}))
    assert first == again and first["num_windows"] == 2
    assert all(window in everything["windows"] for window in first["windows"])
    seeds = {describe(small_config(**{"eval.max_windows": 2, "eval.seed": s}))["windows_hash"] for s in range(6)}
    assert len(seeds) > 1  # the seed picks the subset


def test_runs_that_train_differently_record_one_hash_and_one_base_score(small_config, tmp_path):
    records, base = [], []
    for i, training in enumerate(({"data.num_views": 2, "data.width": 70, "train.seed": 1},
                                  {"data.num_views": 3, "data.width": 56, "train.seed": 2})):
        config = small_config(**{"eval.num_views": 2, "eval.width": 56, "train.epochs": 1,
                                 "train.steps_per_epoch": 1, "train.output_dir": str(tmp_path / f"run{i}"),
                                 **training})
        result = run_training(config)
        records.append(json.loads((tmp_path / f"run{i}" / VALIDATION_FILE).read_text()))
        report = evaluate_checkpoint(config, result.last_checkpoint, compare_base=True, out_dir=tmp_path / f"eval{i}")
        assert report["windows_hash"] == records[-1]["windows_hash"]
        base.append(report["results"]["base"])
    assert records[0]["windows_hash"] == records[1]["windows_hash"]
    assert records[0]["windows"] == records[1]["windows"]
    assert base[0] == base[1]  # the frozen base, scored on the same windows, scores the same
