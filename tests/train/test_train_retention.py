"""Forgetting: a final evaluation also scores base and adapter on a retention set from the base's own
domain (`eval.retention_root`), and the sweep logs it as `retention/*` metrics."""

import json

import numpy as np
import pytest

from lora_train.builders import build_model
from lora_train.errors import UserError
from lora_train.evaluate import build_retention_set, evaluate_checkpoint, evaluate_model
from lora_train.train import run_training
from sweeps.selection import ConfirmRun
from sweeps.trial_reporter import final_eval_metrics


@pytest.mark.slow
def test_retention_scores_base_and_adapter_on_the_base_domain(small_config, synthetic_generic_root, tmp_path):
    trained = run_training(small_config(**{"train.epochs": 1, "train.steps_per_epoch": 2, "optim.lr": 1e-2}))
    config = small_config(**{"eval.retention_root": str(synthetic_generic_root), "eval.max_windows": 3})
    report = evaluate_checkpoint(config, trained.last_checkpoint, compare_base=True, out_dir=tmp_path / "eval",
                                 base_cache=tmp_path / "base_eval")
    retention = report["retention"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["retention"] == retention
    assert "retention (the base's own domain)" in (tmp_path / "eval" / "metrics.txt").read_text()

    base, adapter = retention["per_window"]["base"], retention["per_window"]["adapter"]
    assert [w["key_view"] for w in base] == [w["key_view"] for w in adapter] and len(base) == 3
    assert {w["scene"] for w in base} <= {"generic_000", "generic_001"}  # the retention set, not facades
    assert not {w["scene"] for w in base} & {w["scene"] for w in report["per_window"]["base"]}
    assert retention["windows_hash"] != report["windows_hash"]
    delta = np.mean([a["abs_rel"] for a in adapter]) - np.mean([b["abs_rel"] for b in base])
    assert retention["comparison"]["abs_rel_delta"] == pytest.approx(delta)
    assert delta != 0  # the adapter changed the base's predictions on its own domain
    assert ConfirmRun.from_report(retention).base.values.tolist() == [b["abs_rel"] for b in base]

    # the frozen base on the retention windows, evaluated directly, scores the same
    retained = build_retention_set(config)
    direct = evaluate_model(build_model(config, base_only=True), retained, config.eval.align)
    assert direct["abs_rel"] == pytest.approx(retention["results"]["base"]["abs_rel"], rel=1e-6)
    # and comes from the cache the second time, unchanged
    again = evaluate_checkpoint(config, trained.last_checkpoint, compare_base=True, out_dir=tmp_path / "again",
                                base_cache=tmp_path / "base_eval")
    assert again["retention"]["per_window"]["base"] == base and again["base_from_cache"]

    metrics = final_eval_metrics(report)  # what the sweep logs on the trial's run
    assert metrics["retention/abs_rel"] == pytest.approx(retention["results"]["adapter"]["abs_rel"])
    assert metrics["retention/base_abs_rel"] == pytest.approx(retention["results"]["base"]["abs_rel"])
    assert metrics["retention/abs_rel_delta"] == pytest.approx(delta)
    assert metrics["eval/abs_rel_delta"] == pytest.approx(report["comparison"]["abs_rel_delta"])
    for label in ("base", "adapter"):
        values = report["results"][label]
        for key in ("abs_rel", "abs_rel_ci_low", "abs_rel_ci_high"):
            if np.isfinite(values[key]):
                assert metrics[f"eval/{label}_{key}"] == pytest.approx(values[key])
            else:  # one validation scene: (-inf, inf) is not logged
                assert f"eval/{label}_{key}" not in metrics


def test_no_retention_set_no_section_and_bad_settings_name_the_key(small_config, tmp_path):
    assert build_retention_set(small_config()) is None
    with pytest.raises(UserError, match="eval.retention_root: not a directory"):
        build_retention_set(small_config(**{"eval.retention_root": str(tmp_path / "missing")}))
    with pytest.raises(UserError, match="eval.retention_root and eval.retention_synthetic"):
        small_config(**{"eval.retention_root": str(tmp_path), "eval.retention_synthetic": "generic"})
