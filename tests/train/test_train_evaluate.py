"""`python -m lora_train.evaluate`: metrics files and visualisations, base vs adapter in one call."""

import json
import math

import pytest

from lora_train.evaluate import main as evaluate_main
from lora_train.train import run_training


@pytest.fixture
def trained_checkpoint(small_config):
    config = small_config(**{"train.epochs": 1, "train.steps_per_epoch": 2})
    result = run_training(config)
    assert result.status == "completed"
    return result.last_checkpoint


def test_evaluate_compare_base_writes_metrics_and_pngs(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    code = evaluate_main(["--adapter", trained_checkpoint, "--compare-base", "--out", str(out),
                          "--num-vis", "2", "--align", "lsq"])
    assert code == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["align"] == "lsq" and set(report["results"]) == {"base", "adapter"}
    for label in ("base", "adapter"):
        metrics = report["results"][label]
        for key in ("abs_rel", "sq_rel", "rmse", "log_rmse", "delta1", "delta2", "delta3", "tau103",
                    "rra30", "rta30", "auc30", "loss"):
            assert math.isfinite(metrics[key]), (label, key)
        assert 0 <= metrics["delta1"] <= 1 and metrics["abs_rel"] >= 0
    # the adapter changed the predictions (its B matrices are no longer zero)
    assert report["results"]["base"]["abs_rel"] != report["results"]["adapter"]["abs_rel"]
    text = (out / "metrics.txt").read_text()
    assert "abs_rel" in text and "base" in text and "adapter" in text and "change" in text
    pngs = sorted((out / "visualizations").glob("*.png"))
    assert len(pngs) == min(2, report["num_windows"]) and all(p.stat().st_size > 5000 for p in pngs)
    assert "abs_rel" in capsys.readouterr().out


def test_evaluate_cli_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(["--adapter", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "trainer_state.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(["--config", "default", "--compare-base"])
    assert exit_info.value.code == 2
    assert "--compare-base needs --adapter" in capsys.readouterr().err
