"""Confirm-phase choice and the promotion rule (`sweeps.selection`) against stand-in trainers.

A stand-in "trains" a configuration by drawing per-window AbsRel around the frozen base's: a true
gain (0 for pure noise) plus noise that is shared by the windows of a scene in that run and noise of
each window. Its records have the layout of `evaluate_checkpoint`'s `metrics.json`.
"""

import numpy as np
import pytest

from sweeps.selection import (
    ConfirmRun,
    SearchTrial,
    WindowScores,
    choose_candidate,
    pool_seeds,
    pooled_intervals,
    promotion_decision,
    search_ranking,
)

NUM_SCENES, WINDOWS_PER_SCENE = 4, 8  # an ETH3D-size validation split: 3-4 scenes of 8 keyviews
SCENE_NOISE, WINDOW_NOISE = 0.01, 0.01  # per run; mean over windows varies ~0.005 between seeds


def _windows(num_scenes=NUM_SCENES, per_scene=WINDOWS_PER_SCENE):
    return [(f"scene_{k}", f"DSC_{k}{j:03d}.JPG", [f"DSC_{k}{j:03d}b.JPG"]) for k in range(num_scenes)
            for j in range(per_scene)]


def _records(windows, abs_rel):
    return [{"scene": s, "key_view": key, "companion_views": views, "abs_rel": float(v)}
            for (s, key, views), v in zip(windows, abs_rel)]


class StandIn:
    """The base's per-window AbsRel on one validation split, and runs of configurations around it."""

    def __init__(self, rng, windows):
        self.rng, self.windows = rng, windows
        self.scene_of = np.unique([w[0] for w in windows], return_inverse=True)[1]
        num_scenes = self.scene_of.max() + 1
        base = 0.17 + rng.normal(0, 0.03, num_scenes)[self.scene_of] + rng.normal(0, 0.02, len(windows))
        self.base = np.clip(base, 0.02, None)

    def train(self, gain):
        """One run's `metrics.json` report (adapter and base per window)."""
        noise = (self.rng.normal(0, SCENE_NOISE, self.scene_of.max() + 1)[self.scene_of]
                 + self.rng.normal(0, WINDOW_NOISE, len(self.windows)))
        return {"per_window": {"base": _records(self.windows, self.base),
                               "adapter": _records(self.windows, self.base - gain + noise)}}


def _sweep_decision(repetition, gain, num_configs=8, top_k=3, seeds=3, champion_gain=None):
    """A search (one seed per configuration), a confirm phase of the top-k, then the decision."""
    standin = StandIn(np.random.default_rng(repetition), _windows())
    search = {f"trial_{c}": ConfirmRun.from_report(standin.train(gain)) for c in range(num_configs)}
    top = sorted(search, key=lambda c: float(np.mean(search[c].adapter.values)))[:top_k]
    confirm = {c: [ConfirmRun.from_report(standin.train(gain)) for _ in range(seeds)] for c in top}
    candidate = choose_candidate(confirm)
    champion = None
    if champion_gain is not None:
        champion = ConfirmRun.from_report(standin.train(champion_gain)).adapter
    return promotion_decision(candidate.adapter, candidate.base, champion, num_compared=candidate.num_compared,
                              seed=repetition)


def test_pure_noise_search_best_is_not_promoted():
    decisions = [_sweep_decision(repetition, gain=0.0) for repetition in range(100)]
    rejected = sum(d.decision == "rejected" for d in decisions)
    print(f"pure-noise stand-in: rejected {rejected}/100")
    assert rejected >= 95
    assert all(d.decision in ("rejected", "promoted") for d in decisions)


def test_true_gain_of_005_is_promoted():
    decisions = [_sweep_decision(repetition, gain=0.05) for repetition in range(100)]
    promoted = sum(d.decision == "promoted" for d in decisions)
    print(f"stand-in with a true gain of 0.05 AbsRel: promoted {promoted}/100")
    assert promoted >= 95
    d = decisions[0]
    assert d.delta_ci_low <= d.delta_vs_base <= d.delta_ci_high < 0
    assert d.delta_vs_base == pytest.approx(-0.05, abs=0.01)
    assert (d.num_scenes, d.num_windows) == (NUM_SCENES, NUM_SCENES * WINDOWS_PER_SCENE)
    assert d.confidence == pytest.approx(1 - 0.05 / 3)  # Bonferroni over the 3 confirmed configurations
    assert "lies below 0" in d.reason and "\n" not in d.reason


def test_champion_is_kept_unless_significantly_beaten():
    as_good = [_sweep_decision(r, gain=0.05, champion_gain=0.05).decision for r in range(40)]
    print(f"candidate as good as the champion: kept {as_good.count('kept')}/40")
    assert as_good.count("kept") >= 38 and "rejected" not in as_good
    better = [_sweep_decision(r, gain=0.10, champion_gain=0.05).decision for r in range(20)]
    assert better.count("promoted") >= 19
    worse_than_base = _sweep_decision(0, gain=-0.05, champion_gain=0.05)
    assert worse_than_base.decision == "rejected" and worse_than_base.delta_vs_champion is None


def test_identical_candidate_keeps_the_champion_and_tags_say_why():
    standin = StandIn(np.random.default_rng(0), _windows())
    champion = ConfirmRun.from_report(standin.train(0.05))
    decision = promotion_decision(champion.adapter, champion.base, champion.adapter)
    assert decision.decision == "kept"
    assert decision.delta_vs_champion == 0.0 and decision.champion_ci_low == decision.champion_ci_high == 0.0
    tags = decision.tags()
    assert tags["champion.decision"] == "kept" and tags["champion.reason"] == decision.reason
    assert float(tags["champion.delta_vs_base_ci_high"]) < 0 and tags["champion.num_scenes"] == str(NUM_SCENES)
    assert "champion" in decision.reason and "does not lie below 0" in decision.reason


def test_pool_seeds_averages_shared_windows_and_joins_folds():
    windows = _windows(num_scenes=2, per_scene=2)
    base = [0.2, 0.3, 0.4, 0.5]

    def run(wins, adapter):
        return ConfirmRun(WindowScores.from_records(_records(wins, adapter)),
                          WindowScores.from_records(_records(wins, [base[windows.index(w)] for w in wins])))

    shared = pool_seeds([run(windows, [0.1, 0.2, 0.3, np.nan]), run(windows, [0.3, 0.2, 0.5, 0.4])])
    np.testing.assert_allclose(shared.adapter.values, [0.2, 0.2, 0.4, 0.4])  # NaN: the other seed only
    np.testing.assert_allclose(shared.base.values, base)
    folds = pool_seeds([run(windows[:2], [0.1, 0.2]), run(windows[2:], [0.3, 0.4])])  # scene-disjoint folds
    assert [w[0] for w in folds.adapter.windows] == ["scene_0", "scene_0", "scene_1", "scene_1"]
    np.testing.assert_allclose(folds.adapter.values, [0.1, 0.2, 0.3, 0.4])


def test_choose_candidate_takes_the_best_mean_over_confirm_runs():
    standin = StandIn(np.random.default_rng(5), _windows())
    runs = {"good": [ConfirmRun.from_report(standin.train(0.04)) for _ in range(3)],
            "lucky_once": [ConfirmRun.from_report(standin.train(gain)) for gain in (0.08, 0.0, 0.0)],
            "failed": []}
    best_single = min((float(np.mean(r.adapter.values)), c) for c, rs in runs.items() for r in rs)
    assert best_single[1] == "lucky_once"  # what a single-seed choice would take
    candidate = choose_candidate(runs)
    assert candidate.config == "good" and candidate.num_runs == 3 and candidate.num_compared == 3
    expected = np.mean([r.adapter.values for r in runs["good"]], axis=0) - standin.base
    assert candidate.mean_delta == pytest.approx(expected.mean())
    with pytest.raises(ValueError, match="no configuration"):
        choose_candidate({"failed": []})


def test_champion_must_cover_the_candidate_windows():
    standin = StandIn(np.random.default_rng(6), _windows())
    run = ConfirmRun.from_report(standin.train(0.05))
    elsewhere = WindowScores.from_records(_records(_windows(num_scenes=1), standin.base[:WINDOWS_PER_SCENE]))
    with pytest.raises(ValueError, match="were not evaluated"):
        promotion_decision(run.adapter, run.base, elsewhere)
    with pytest.raises(ValueError, match="different windows"):
        ConfirmRun(run.adapter, elsewhere)


def test_search_ranking_keeps_trials_scored_on_the_sweep_windows_best_first():
    trials = [SearchTrial("t3", {"val/abs_rel": 0.20}, "h"), SearchTrial("t1", {"val/abs_rel": 0.15}, "h"),
              SearchTrial("t2", {"val/abs_rel": 0.10}, "other"),  # scored on other windows
              SearchTrial("t4", {"val/abs_rel": 0.05}, "h", status="diverged"),
              SearchTrial("t5", {"val/abs_rel": float("nan")}, "h"), SearchTrial("t6", {}, "h"),
              SearchTrial("t0", {"val/abs_rel": 0.20}, "h", status="early_stopped")]
    assert [t.trial_id for t in search_ranking(trials, "val/abs_rel", "min", "h")] == ["t1", "t0", "t3"]
    assert [t.trial_id for t in search_ranking(trials, "val/abs_rel", "max", "h")] == ["t0", "t3", "t1"]
    assert [t.trial_id for t in search_ranking(trials, "val/abs_rel", "min")][:2] == ["t2", "t1"]


def test_a_candidate_that_forgets_the_base_domain_is_rejected():
    standin = StandIn(np.random.default_rng(7), _windows())
    retention_set = StandIn(np.random.default_rng(8), _windows(num_scenes=3))
    runs = [ConfirmRun.from_report(standin.train(0.05)) for _ in range(3)]
    pooled = pool_seeds(runs)
    for forgetting, decision in ((-0.03, "rejected"), (0.0, "promoted")):  # a gain of -0.03: AbsRel +0.03
        retention = pool_seeds([ConfirmRun.from_report(retention_set.train(forgetting)) for _ in range(3)])
        d = promotion_decision(pooled.adapter, pooled.base, retention=retention, retention_margin=0.01)
        assert d.decision == decision, d.reason
        assert d.retention_ci_low <= d.retention_delta <= d.retention_ci_high
        assert float(d.tags()["champion.retention_delta"]) == pytest.approx(d.retention_delta, rel=1e-5)
    assert d.retention_delta == pytest.approx(0.0, abs=0.01)
    forgot = promotion_decision(pooled.adapter, pooled.base, retention=pool_seeds(
        [ConfirmRun.from_report(retention_set.train(-0.03))]), retention_margin=0.01)
    assert "forgets the base's domain" in forgot.reason and "exceeds the margin +0.0100" in forgot.reason
    assert promotion_decision(pooled.adapter, pooled.base).retention_delta is None  # no retention set


def test_pooled_intervals_of_a_configuration():
    standin = StandIn(np.random.default_rng(9), _windows())
    runs = [ConfirmRun.from_report(standin.train(0.05)) for _ in range(2)]
    absolute, delta = pooled_intervals(runs)
    pooled = pool_seeds(runs)
    assert absolute.mean == pytest.approx(pooled.adapter.values.mean())
    assert delta.mean == pytest.approx((pooled.adapter.values - pooled.base.values).mean())
    assert absolute.low < absolute.mean < absolute.high and delta.high < 0 and delta.confidence == 0.95
