"""A shrunk real sweep (tiny pretrained base, synthetic facades, real training, real Ray and MLflow),
run once per module; each test checks one promise on it.

The sweep validates on 4 facade scenes (fewer cannot show a gain: `lora_train.uncertainty`), trains on
the 2 others, confirms both search configurations with 2 new seeds each (`selection`), and checks
retention on held-out scenes of the tiny base's own `generic` domain."""

import json
import textwrap
from pathlib import Path

import pytest

from tests.plugins.ray_fixtures import run_sweep_cli
from tracking.runs import SweepTracker

REPO = Path(__file__).resolve().parents[2]

# Two trials that train differently (views, width, seed) but share one validation protocol.
VAL_SCENES = ["facade_000", "facade_001", "facade_002", "facade_003"]
VAL_WINDOWS = 16
SPACE = textwrap.dedent("""\
    name: real-shrunk
    budget: {num_samples: 2, max_epochs: 1}
    resources: {cpus_per_trial: 1}
    validation: {num_views: 2, width: 56, max_windows: VAL_WINDOWS, scenes: VAL_SCENES}
    selection: {top_k: 2, seeds: 2}
    base_config:
      overrides:
        model.preset: tiny
        model.checkpoint: tiny-base
        model.overrides.enable_point: false
        data.synthetic_scenes: 6
        train.steps_per_epoch: 2
        eval.num_visualizations: 1
        eval.retention_synthetic: generic
    strategies: {A: {}}
    parameters:
      lora.rank: 4
      optim.lr: 1.0e-3
      data.num_views: {choices: [2, 3]}
      data.width: {choices: [56, 70]}
      train.seed: {choices: [1, 2]}
    points_to_evaluate:
      - {data.num_views: 2, data.width: 70, train.seed: 1}
      - {data.num_views: 3, data.width: 56, train.seed: 2}
    """).replace("VAL_WINDOWS", str(VAL_WINDOWS)).replace("VAL_SCENES", str(VAL_SCENES))


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, sweep_mlflow):
    work = tmp_path_factory.mktemp("real-sweep")
    space = work / "space.yaml"
    space.write_text(SPACE)
    proc = run_sweep_cli("--space", space, "--storage-path", work / "store", "--tracking-uri", sweep_mlflow,
                         timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    tracker = SweepTracker(sweep_mlflow, "real-shrunk", create=False)
    runs = tracker.trial_runs()
    return {"proc": proc, "tracker": tracker, "sweep_dir": work / "store" / "real-shrunk", "space": space,
            "runs": [r for r in runs if r.data.tags.get("sweep.phase") == "search"],
            "confirm_runs": [r for r in runs if r.data.tags.get("sweep.phase") == "confirm"]}


@pytest.mark.slow
def test_every_trial_is_scored_on_the_protocol_windows(real_sweep):
    tracker, runs = real_sweep["tracker"], real_sweep["runs"]
    assert len(runs) == 2
    trained_on = {(r.data.params["data.num_views"], r.data.params["data.width"], r.data.params["train.seed"])
                  for r in runs}
    assert trained_on == {("2", "70", "1"), ("3", "56", "2")}
    parent = tracker.get_run(tracker.parent_run_id)
    expected = parent.data.tags["val.windows_hash"]
    assert {r.data.tags.get("val.windows_hash") for r in runs} == {expected}
    for run in runs:
        assert (run.data.params["val.num_views"], run.data.params["val.width"], run.data.params["val.num_windows"]) \
            == ("2", "56", str(VAL_WINDOWS))
    base_scores = {r.data.metrics["eval/base_abs_rel"] for r in runs}
    assert len(base_scores) == 1  # the frozen base on the same windows, twice: one score
    windows = json.loads(Path(tracker.client.download_artifacts(parent.info.run_id, "validation.json")).read_text())
    assert windows["windows_hash"] == expected and windows["num_windows"] == VAL_WINDOWS
    assert {scene for scene, _ in windows["windows"]} == set(VAL_SCENES)


@pytest.mark.slow
def test_top_configurations_are_confirmed_with_new_seeds_and_the_decision_is_logged(real_sweep):
    tracker, search, confirm = real_sweep["tracker"], real_sweep["runs"], real_sweep["confirm_runs"]
    summary = json.loads((real_sweep["sweep_dir"] / "summary.json").read_text())
    print(f"confirm phase: {len(confirm)} runs in {summary['confirm_wall_s']:.1f} s")
    parent = tracker.get_run(tracker.parent_run_id)
    expected_hash = parent.data.tags["val.windows_hash"]

    # 2 configurations x 2 new seeds, at the full budget, children of the parent, tagged
    assert len(confirm) == 4
    search_ids = {r.data.tags["ray.trial_id"] for r in search}
    by_config = {}
    for run in confirm:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == tracker.parent_run_id and tags["trial.status"] == "completed"
        assert tags["val.windows_hash"] == expected_hash  # no folds: the sweep's windows
        by_config.setdefault(tags["confirm.of"], set()).add(tags["confirm.seed"])
        assert run.data.params["train.seed"] == tags["confirm.seed"]
        for key in ("eval/abs_rel_delta", "eval/adapter_abs_rel_ci_high", "retention/abs_rel",
                    "retention/abs_rel_delta"):
            assert key in run.data.metrics, (key, sorted(run.data.metrics))
    assert by_config == {trial: {"1000", "1001"} for trial in search_ids}
    for run in search:  # the search trials' own evaluation carries the retention change too
        assert {"retention/abs_rel", "retention/abs_rel_delta", "confirm/abs_rel", "confirm/abs_rel_delta"} \
            <= set(run.data.metrics)
        assert run.data.metrics["confirm/num_runs"] == 2 and run.data.metrics["confirm/num_scenes"] == 4

    # the decision on the parent, with its interval, and on the console
    tags = parent.data.tags
    print("decision:", {k: v for k, v in tags.items() if k.startswith("champion.")})
    decision = tags["champion.decision"]
    assert decision == "promoted", tags["champion.reason"]  # facades: a real gain, shown on 4 scenes
    low, mean, high = (float(tags[f"champion.delta_vs_base{s}"]) for s in ("_ci_low", "", "_ci_high"))
    assert low <= mean <= high and tags["champion.num_scenes"] == "4"
    assert "retention AbsRel" not in tags["champion.reason"] or decision == "rejected"
    assert f"champion: {decision}: {tags['champion.reason']}" in real_sweep["proc"].stdout
    assert tags["champion.run_id"] in {r.info.run_id for r in confirm}
    version = tracker.client.get_model_version_by_alias("real-shrunk", "champion")
    assert version.run_id == tags["champion.run_id"] and tags["champion.version"] == version.version
    assert float(version.tags["champion.delta_vs_base_ci_high"]) == pytest.approx(high) and high < 0

    # the leaderboard: search rows only, the confirmed mean and interval beside the single-seed score
    board = (real_sweep["sweep_dir"] / "leaderboard.md").read_text()
    print(board)
    assert "best val AbsRel (search, single seed)" in board and "confirmed AbsRel [95 % CI]" in board
    assert len((real_sweep["sweep_dir"] / "leaderboard.csv").read_text().splitlines()) == 1 + 2


@pytest.mark.slow
def test_a_resumed_sweep_trains_no_confirm_run_again(real_sweep, sweep_mlflow):
    """Runs last: `--resume` of the finished sweep finds its confirm runs by their tags."""
    tracker = real_sweep["tracker"]
    before = {r.info.run_id for r in real_sweep["confirm_runs"]}
    decision = tracker.get_run(tracker.parent_run_id).data.tags["champion.decision"]
    proc = run_sweep_cli("--space", real_sweep["space"], "--resume", "--storage-path", real_sweep["sweep_dir"].parent,
                         "--tracking-uri", sweep_mlflow)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "run(s) to train" not in proc.stdout
    runs = tracker.trial_runs()
    assert {r.info.run_id for r in runs if r.data.tags.get("sweep.phase") == "confirm"} == before
    assert tracker.get_run(tracker.parent_run_id).data.tags["champion.decision"] == decision
    assert len(tracker.client.search_model_versions("name = 'real-shrunk'")) == (decision == "promoted")
