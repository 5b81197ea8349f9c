"""Fast checks of the trial's parts: the report channel, adapter counting, overrides."""

import json
import math

import torch
from safetensors.torch import save_file

from sweeps.trial import ReportChannel, adapter_param_count


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
