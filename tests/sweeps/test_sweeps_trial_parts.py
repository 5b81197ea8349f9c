"""Fast checks of the trial's parts: the report channel, adapter counting, overrides."""

import json
import math
from types import SimpleNamespace

import pytest

import torch
from safetensors.torch import save_file

from sweeps.trial import TuneResults
from sweeps.trial_reporter import TrialReporter, TrialStopped, adapter_param_count
from sweeps.trial_setup import ReportChannel, mark_stopped


def test_report_channel_in_order_and_skips_an_earlier_attempt(tmp_path):
    old = ReportChannel(tmp_path / "reports")
    old.put({"epoch": 1})  # left by a failed attempt
    channel = ReportChannel(tmp_path / "reports")
    channel.skip_existing()
    assert channel.read_new() == []
    for epoch in range(2, 6):
        channel.put({"epoch": epoch, "val/abs_rel": float("nan") if epoch == 3 else 0.1})
    items = channel.read_new()
    assert [i["epoch"] for i in items] == [2, 3, 4, 5]
    assert math.isnan(items[1]["val/abs_rel"])
    assert channel.read_new() == []
    assert not list((tmp_path / "reports").glob(".*.tmp"))


def test_adapter_param_count(tmp_path):
    save_file({"a.lora_A.weight": torch.zeros(4, 32), "a.lora_B.weight": torch.zeros(16, 4)},
              str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4}))
    assert adapter_param_count(str(tmp_path)) == 4 * 32 + 16 * 4
    assert adapter_param_count(str(tmp_path / "missing")) == 0


def test_stop_marker_ends_training_at_the_next_step(tmp_path):
    setup = SimpleNamespace(sweep_dir=str(tmp_path))
    mark_stopped(setup, "t1")  # a trial that never wrote anything: nothing to mark
    assert not (tmp_path / "trials").exists()
    results = TuneResults(("val/abs_rel",), tmp_path / "trials" / "t1" / "reports")
    reporter = TrialReporter(results, None, None, tmp_path / "trials" / "t1", "val/abs_rel", "min")
    reporter.on_step(0, {"train/loss": 1.0})  # not stopped: goes on
    assert not results.driver_gone()
    mark_stopped(setup, "t1")
    assert results.driver_gone() and ReportChannel(tmp_path / "trials" / "t1" / "reports").driver_gone()
    with pytest.raises(TrialStopped):
        reporter.on_step(1, {"train/loss": 0.9})
    reporter.on_end("failed", "TrialStopped")  # what run_training calls next: silent, nothing reported
