"""Cluster bootstrap intervals (`lora_train.uncertainty`) on synthetic data with a known truth."""

import itertools
import math

import numpy as np
import pytest

from lora_train.uncertainty import (
    cluster_bootstrap,
    few_scenes_factor,
    paired_difference,
)

TRUE_MEAN = 0.2


def _clustered(rng, num_scenes, windows_per_scene=8, scene_sd=1.0, window_sd=1.0):
    """Per-window values `TRUE_MEAN + scene effect + window noise`, and their scene names."""
    scene_of = np.repeat(np.arange(num_scenes), windows_per_scene)
    values = TRUE_MEAN + rng.normal(0, scene_sd, num_scenes)[scene_of] + rng.normal(0, window_sd, scene_of.size)
    return values, np.array([f"scene_{k}" for k in scene_of])


def _coverage(num_scenes, repetitions=200, **bootstrap):
    rng = np.random.default_rng(2024)
    hits = 0
    for repetition in range(repetitions):
        values, scenes = _clustered(rng, num_scenes)
        interval = cluster_bootstrap(values, scenes, num_resamples=1000, seed=repetition, **bootstrap)
        hits += interval.low <= TRUE_MEAN <= interval.high
    return hits / repetitions


def test_coverage_of_a_known_mean_is_about_95_percent():
    coverage = _coverage(13)  # ETH3D's 13 training scenes, scene effects as large as window noise
    print(f"coverage of the 95 % interval, 13 scenes x 8 windows, 200 repetitions: {coverage:.3f}")
    assert 0.90 <= coverage <= 0.99


def test_plain_percentile_interval_is_too_narrow_with_three_scenes_and_widening_fixes_it():
    plain, widened = _coverage(3, widen=False), _coverage(3)
    print(f"coverage with 3 scenes: plain percentile {plain:.3f}, widened {widened:.3f}")
    assert plain < 0.90 and widened >= 0.93


def test_one_window_per_scene_is_the_ordinary_bootstrap_of_the_mean():
    values = np.random.default_rng(0).normal(5.0, 2.0, 400)
    interval = cluster_bootstrap(values, np.arange(400).astype(str), widen=False, num_resamples=4000)
    half_width = 1.959964 * values.std() / math.sqrt(values.size)
    assert interval.mean == pytest.approx(values.mean())
    assert interval.high - interval.mean == pytest.approx(half_width, rel=0.08)
    assert interval.mean - interval.low == pytest.approx(half_width, rel=0.08)
    assert (interval.num_scenes, interval.num_windows) == (400, 400)


def test_one_scene_resamples_its_windows_and_widened_says_nothing():
    values = np.random.default_rng(1).normal(1.0, 0.5, 300)
    scenes = ["only"] * 300
    plain = cluster_bootstrap(values, scenes, widen=False, num_resamples=4000)
    half_width = 1.959964 * values.std() / math.sqrt(values.size)
    assert plain.high - plain.low == pytest.approx(2 * half_width, rel=0.08)
    widened = cluster_bootstrap(values, scenes)
    assert (widened.low, widened.high, widened.num_scenes) == (-math.inf, math.inf, 1)
    assert widened.mean == pytest.approx(values.mean())


def test_widening_factor_shrinks_towards_one_with_more_scenes():
    factors = [few_scenes_factor(k, 0.95) for k in (2, 3, 4, 6, 13, 10_000)]
    assert all(a > b for a, b in itertools.pairwise(factors))
    assert factors[-1] == pytest.approx(1.0, abs=1e-3)
    assert few_scenes_factor(1, 0.95) == math.inf


def test_unequal_scenes_nan_windows_and_seeds():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1, 3), rng.normal(1, 1, 11), rng.normal(2, 1, 5)])
    scenes = ["a"] * 3 + ["b"] * 11 + ["c"] * 5
    interval = cluster_bootstrap(values, scenes, seed=7)
    assert interval.low < interval.mean < interval.high
    assert interval == cluster_bootstrap(values, scenes, seed=7)  # seeded: the same interval
    assert interval != cluster_bootstrap(values, scenes, seed=8)
    with_nan = cluster_bootstrap(np.append(values, np.nan), scenes + ["d"], seed=7)
    assert with_nan == interval  # the NaN window (and its scene) is dropped
    constant = cluster_bootstrap(np.full(19, 0.3), scenes)
    assert constant.low == pytest.approx(0.3) and constant.high == pytest.approx(0.3)
    empty = cluster_bootstrap([np.nan, np.nan], ["a", "b"])
    assert math.isnan(empty.mean) and empty.num_windows == 0
    with pytest.raises(ValueError, match="matching"):
        cluster_bootstrap([1.0, 2.0], ["a"])


def test_paired_difference_cancels_scene_difficulty():
    rng = np.random.default_rng(4)
    values, scenes = _clustered(rng, 6, scene_sd=0.05, window_sd=0.02)  # base: hard and easy scenes
    adapter = values - 0.01 + rng.normal(0, 0.003, values.size)  # a small, consistent gain
    paired = paired_difference(adapter, values, scenes)
    separate = cluster_bootstrap(adapter, scenes), cluster_bootstrap(values, scenes)
    assert paired.high < 0 < separate[1].high - separate[0].low  # shown paired, not by two intervals
    assert paired.mean == pytest.approx(np.mean(adapter - values))
    assert paired.high - paired.low < 0.2 * (separate[0].high - separate[0].low)
    with pytest.raises(ValueError, match="differ"):
        paired_difference(adapter[:-1], values, scenes)
