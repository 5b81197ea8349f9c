"""The confirm phase's wiring, without training: the `selection:` section, the confirm runs' seeds,
folds and trial configs, the single-seed decision when the phase is off, and the leaderboard of
confirmed configurations (real MLflow server; per-window reports from the stand-in of
test_sweeps_selection.py). The phase itself runs in tests/sweeps/test_sweeps_real.py."""

import json
import textwrap

import numpy as np
import pytest

from lora_train.errors import UserError
from sweeps import console
from sweeps.confirm import confirm_specs, run_confirm_phase
from sweeps.results import decide_champion
from sweeps.space import trial_overrides
from sweeps.space_file import load_space
from tests.sweeps.test_sweeps_selection import StandIn, _windows
from tracking.compare import Estimate, build_leaderboard, format_leaderboard, write_leaderboard
from tracking.runs import SweepTracker

SPACE = textwrap.dedent("""\
    name: {name}
    budget: {{num_samples: 4, max_epochs: 2}}
    strategies: {{A: {{}}}}
    parameters:
      optim.lr: {{type: float, low: 1e-4, high: 1e-2, log: true}}
      train.seed: {{choices: [1000, 7]}}
    """)


def space_file(tmp_path, name="confirm-t", selection=None):
    text = SPACE.format(name=name) + (f"selection: {selection}\n" if selection else "")
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_space(path, validate_config=False)


def test_selection_section_defaults_and_one_line_errors(tmp_path):
    assert space_file(tmp_path).selection == {"top_k": 3, "seeds": 3, "cv_folds": 0, "retention_margin": 0.01}
    assert space_file(tmp_path, selection="{top_k: 0}").selection["top_k"] == 0
    for selection, words in (("{cv_folds: 1}", "selection.cv_folds: one fold holds no scene out"),
                             ("{top_k: -1}", "selection.top_k: must be >= 0"),
                             ("{seeds: 1.5}", "selection.seeds: expected an integer"),
                             ("{retention_margin: -0.1}", "selection.retention_margin: must be >= 0"),
                             ("{topk: 2}", "selection.topk: unknown key")):
        with pytest.raises(UserError, match=rf"space.yaml:7: {words}"):
            space_file(tmp_path, selection=selection)


def test_confirm_runs_take_new_seeds_and_rotate_over_scene_folds(tmp_path):
    space = space_file(tmp_path, selection="{top_k: 2, seeds: 3, cv_folds: 2}")
    search_config = {"lora": {"strategy": "A"}, "optim": {"lr": 1e-3}, "train": {"seed": 1000}}
    plain = confirm_specs("t_00001", search_config, space, None)
    assert [s.seed for s in plain] == [1001, 1002, 1003]  # 1000 was this configuration's search seed
    assert all(s.fold is None and s.overrides == {"train.seed": s.seed} for s in plain)

    folds = (["f2", "f3", "f4"], [["f2", "f4"], ["f3"]])
    specs = confirm_specs("t_00001", search_config, space, folds)
    assert [s.fold for s in specs] == [0, 1, 0]
    config = specs[1].trial_config(search_config)
    assert search_config["train"]["seed"] == 1000  # copied, not changed
    overrides = trial_overrides(config, space)  # what the trial trains with
    assert overrides["train.seed"] == 1002 and overrides["optim.lr"] == 1e-3
    assert overrides["eval.scenes"] == ["f3"] and overrides["data.scenes"] == ["f2", "f3", "f4"]
    assert overrides["train.epochs"] == space.max_epochs and "confirm.of" not in overrides


def _search_sweep(uri, tmp_path, name, gains, selection):
    """A parent with one search run per gain, each with its `eval/metrics.json` in the sweep folder."""
    space = space_file(tmp_path, name=name, selection=selection)
    tracker = SweepTracker(uri, name)
    tracker.open_parent(name, space.summary(), space.source_text)
    tracker.client.set_tag(tracker.parent_run_id, "val.windows_hash", "h0")
    standin = StandIn(np.random.default_rng(3), _windows())
    for i, gain in enumerate(gains):
        trial = f"t_{i:05d}"
        run_id = tracker.open_trial(trial, {"optim.lr": 1e-3})
        report = {"windows_hash": "h0", **standin.train(gain)}
        scores = [w["abs_rel"] for w in report["per_window"]["adapter"]]
        tracker.client.log_metric(run_id, "best/val_abs_rel", float(np.mean(scores)))
        tracker.client.set_tag(run_id, "val.windows_hash", "h0")
        tracker.close_trial(run_id, "completed", "2 epochs")
        eval_dir = tmp_path / name / "trials" / trial / "eval"
        eval_dir.mkdir(parents=True)
        (eval_dir / "metrics.json").write_text(json.dumps(report))
    return space, tracker


@pytest.mark.parametrize("selection", ["{top_k: 0}", "{seeds: 0}"])
def test_without_confirm_phase_the_best_search_trial_decides_on_its_own_evaluation(
        mlflow_server, tmp_path, unique_name, selection, capsys):
    space, tracker = _search_sweep(mlflow_server, tmp_path, unique_name, [0.0, 0.0, 0.0], selection)
    outcome = run_confirm_phase(space, None, tracker, [], tmp_path / unique_name)  # no Ray needed
    assert not outcome.confirmed and outcome.wall_s == 0 and outcome.num_compared == 3
    (best,) = outcome.runs
    assert best == min(tracker.trial_runs(), key=lambda r: r.data.metrics["best/val_abs_rel"]).data.tags["ray.trial_id"]
    assert "single seed" in outcome.basis and selection[1:-4] in outcome.basis
    assert {r.data.tags["sweep.phase"] for r in tracker.trial_runs()} == {"search"}

    with console.session(tmp_path / "console", verbose=True):  # the driver's console, on this test's stdout
        summary = decide_champion(space, tracker, unique_name, outcome, tmp_path / unique_name)
    tags = tracker.get_run(tracker.parent_run_id).data.tags
    assert tags["champion.decision"] == "rejected" == summary["champion_decision"]["champion.decision"]
    assert "single seed" in tags["champion.reason"] and "does not lie below 0" in tags["champion.reason"]
    assert float(tags["champion.confidence"]) == pytest.approx(1 - 0.05 / 3)  # the best of 3 search trials
    assert f"champion: rejected: {tags['champion.reason']}" in capsys.readouterr().out
    assert "champion_version" not in summary


def test_a_sweep_without_per_window_evaluations_decides_nothing(mlflow_server, tmp_path, unique_name):
    space, tracker = _search_sweep(mlflow_server, tmp_path, unique_name, [0.05], None)
    (tmp_path / unique_name / "trials" / "t_00000" / "eval" / "metrics.json").unlink()  # a stand-in trainer's
    outcome = run_confirm_phase(space, None, tracker, [], tmp_path / unique_name)
    assert outcome.runs == {} and "no search trial has a per-window evaluation" in outcome.basis
    decide_champion(space, tracker, unique_name, outcome, tmp_path / unique_name)
    tags = tracker.get_run(tracker.parent_run_id).data.tags
    assert tags["champion.decision"] == "rejected" and "nothing to decide on" in tags["champion.reason"]


def test_leaderboard_shows_confirmed_configurations_with_their_interval(mlflow_server, tmp_path, unique_name):
    tracker = SweepTracker(mlflow_server, unique_name)
    tracker.open_parent(unique_name, {}, "")
    runs = {}
    for trial, curve in (("s0", [0.20, 0.15]), ("s1", [0.18, 0.14]), ("s2", [0.30])):
        runs[trial] = tracker.open_trial(trial, {"lora.strategy": "A"})
        for epoch, value in enumerate(curve, 1):
            tracker.client.log_metric(runs[trial], "val/abs_rel", value, step=epoch)
        tracker.client.set_tag(runs[trial], "sweep.phase", "search")
    # s0 was confirmed better than s1, whose single search seed was luckier
    for trial, values in (("s0", (0.150, 0.140, 0.160, -0.03, -0.04, -0.02)),
                          ("s1", (0.160, 0.150, 0.170, -0.02, -0.03, float("inf")))):
        names = ("abs_rel", "abs_rel_ci_low", "abs_rel_ci_high", "abs_rel_delta", "abs_rel_delta_ci_low",
                 "abs_rel_delta_ci_high")
        for key, value in zip(names, values):
            if np.isfinite(value):
                tracker.client.log_metric(runs[trial], f"confirm/{key}", value)
        tracker.client.log_metric(runs[trial], "confirm/num_runs", 2)
        for seed in (1000, 1001):
            run_id = tracker.open_trial(f"c-{trial}-{seed}", {"lora.strategy": "A"})
            tracker.client.log_metric(run_id, "val/abs_rel", 0.1, step=1)
            for key, value in (("sweep.phase", "confirm"), ("confirm.of", trial), ("confirm.seed", str(seed))):
                tracker.client.set_tag(run_id, key, value)

    rows = build_leaderboard(tracker)
    assert [r["trial_id"] for r in rows] == ["s0", "s1", "s2"]  # confirmed first, by their confirmed mean
    assert rows[0]["confirm_abs_rel"] == Estimate(0.150, 0.140, 0.160) and rows[0]["confirm_runs"] == 2
    assert rows[1]["confirm_delta"] == Estimate(-0.02, -0.03, None)  # a non-finite bound is not logged
    assert rows[2]["confirm_abs_rel"] is None and rows[2]["best_val_abs_rel"] == pytest.approx(0.30)
    table = format_leaderboard(rows)
    assert "best val AbsRel (search, single seed)" in table and "0.1500 [0.1400, 0.1600]" in table
    assert "-0.0200 [-0.0300, –]" in table
    csv_path, _ = write_leaderboard(rows, tmp_path)
    header, first, *_ = csv_path.read_text().splitlines()
    columns = header.split(",")
    assert dict(zip(columns, first.split(",")))["confirm_abs_rel_ci_high"] == "0.16"
    assert len(csv_path.read_text().splitlines()) == 1 + 3  # the confirm runs are not rows


@pytest.mark.slow
def test_an_existing_champion_is_scored_on_the_candidate_windows(mlflow_server, tmp_path, unique_name):
    """The registered champion's adapter, downloaded from the registry, evaluated with the candidate
    run's config: the same windows, the same numbers as evaluating that adapter directly."""
    from lora_train.config import load_config
    from lora_train.evaluate import evaluate_checkpoint
    from lora_train.tiny_base import TinyBaseRecipe, ensure_tiny_base
    from lora_train.train import run_training
    from sweeps.champion import register_champion
    from sweeps.confirm import EvaluatedRun
    from sweeps.results import champion_scores

    base = ensure_tiny_base(tmp_path / "cache", TinyBaseRecipe(
        steps=4, num_scenes=2, num_views=2, width=56, batch_size=1, views_per_scene=4, image_size=(96, 64)),
        progress=False)

    def trained(name, seed, strategy):
        config = load_config("default", {
            "model.checkpoint": str(base), "data.synthetic_scenes": 3, "data.num_views": 2, "data.width": 56,
            "data.cache_dir": str(tmp_path / "views"), "eval.max_windows": 3, "eval.num_visualizations": 0,
            "lora.strategy": strategy, "lora.rank": 2, "optim.lr": 1e-2, "train.epochs": 1,
            "train.steps_per_epoch": 1, "train.seed": seed, "train.progress_bar": False,
            "train.output_dir": str(tmp_path / name)})
        return config, run_training(config).last_checkpoint

    _, champion_adapter = trained("champion", 1, "A")
    tracker = SweepTracker(mlflow_server, unique_name)
    tracker.open_parent(unique_name, {}, "")
    champion_run = tracker.open_trial("old", {})
    register_champion(tracker, champion_run, unique_name, champion_adapter)
    version = tracker.client.get_model_version_by_alias(unique_name, "champion")

    config, candidate = trained("candidate", 2, "B")
    report = evaluate_checkpoint(config, candidate, compare_base=True, out_dir=tmp_path / "candidate-eval")
    scores = champion_scores(tracker, version, [EvaluatedRun("r", "t", report)], tmp_path / "sweep")
    assert scores.windows == EvaluatedRun("r", "t", report).scores().adapter.windows
    direct = evaluate_checkpoint(config, champion_adapter, out_dir=tmp_path / "direct")
    np.testing.assert_allclose(scores.values, [w["abs_rel"] for w in direct["per_window"]["adapter"]], rtol=1e-6)
    assert not np.allclose(scores.values, [w["abs_rel"] for w in report["per_window"]["adapter"]])


def test_scene_folds_split_the_training_scenes_only(tmp_path, synthetic_root):
    from sweeps.confirm import scene_folds

    path = tmp_path / "space.yaml"
    path.write_text(SPACE.format(name="folds") + textwrap.dedent(f"""\
        validation: {{scenes: [facade_001]}}
        base_config: {{overrides: {{data.root: {synthetic_root}, data.num_views: 2, data.width: 56}}}}
        """))
    space = load_space(path, validate_config=False)
    scenes, folds = scene_folds(space, space.protocol_overrides(), 2)
    assert scenes == ["facade_000", "facade_002"] and folds == [["facade_000"], ["facade_002"]]
    assert scene_folds(space, space.protocol_overrides(), 0) is None
    with pytest.raises(UserError, match="selection.cv_folds: 3 scene-disjoint folds need at least 3 training scenes"):
        scene_folds(space, space.protocol_overrides(), 3)
