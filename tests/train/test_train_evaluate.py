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


def test_base_cache_reuses_the_base_results_and_pictures(trained_checkpoint, tmp_path, capsys):
    cache = tmp_path / "base_eval"
    runs = {}
    for name, extra in (("first", []), ("second", []), ("other_align", ["--align", "lsq"])):
        out = tmp_path / name
        assert evaluate_main(["--adapter", trained_checkpoint, "--compare-base", "--out", str(out),
                              "--num-vis", "2", "--base-cache", str(cache), *extra]) == 0
        runs[name] = (json.loads((out / "metrics.json").read_text()), out)
    first, second, other = (runs[n][0] for n in ("first", "second", "other_align"))
    assert not first["base_from_cache"] and second["base_from_cache"] and not other["base_from_cache"]
    assert second["results"] == first["results"]  # base from the cache, adapter recomputed: same numbers
    for png in sorted((runs["first"][1] / "visualizations").glob("*.png")):  # base column included
        assert (runs["second"][1] / "visualizations" / png.name).read_bytes() == png.read_bytes()
    assert len(list(cache.glob("*.json"))) == 2  # one entry per setting (median, lsq)

    for path in cache.glob("*.npz"):  # a damaged entry is a miss, never an error
        path.write_bytes(b"not an npz")
    out = tmp_path / "after_damage"
    assert evaluate_main(["--adapter", trained_checkpoint, "--compare-base", "--out", str(out),
                          "--num-vis", "2", "--base-cache", str(cache)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert not again["base_from_cache"] and again["results"] == first["results"]
