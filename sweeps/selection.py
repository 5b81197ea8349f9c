"""Honest selection: which configuration a sweep proposes, and whether it becomes the champion.

A search scores each trial once, on one seed, and picks the luckiest (the winner's curse). So the
top-k configurations are trained again with new seeds (the confirm phase), and every confirm run
is evaluated with the frozen base on the same validation windows (`evaluate_checkpoint(...,
compare_base=True)` writes the per-window AbsRel of both to `metrics.json`). From those:

0. Ranking (`search_ranking`): the search trials scored on the sweep's validation windows, best
   first by the space's metric (multi-objective spaces: by the champion rule, feasible trials
   first); the first `top_k` configurations are confirmed.
1. Pooling (`pool_seeds`): the runs of one configuration are combined per window: the adapter's
   AbsRel on a window is the mean over the runs (seeds) that evaluated that window, and so is the
   base's (the same number on every run, the base being frozen). When all seeds share the
   validation windows this averages the seeds on every window; with scene-disjoint folds (each seed
   validated on other scenes) it joins the folds' windows. The paired statistic is then the
   per-window difference adapter − base.
2. The candidate (`choose_candidate`) is the configuration with the lowest pooled mean difference,
   i.e. the best mean over its confirm runs (equal to the lowest mean adapter AbsRel when all runs
   share their windows).
3. Promotion (`promotion_decision`): the candidate is promoted only if the cluster-bootstrap
   interval (`lora_train.uncertainty`: scenes, then windows within scenes, resampled) of the mean
   adapter − base AbsRel lies entirely below 0, and, when a champion exists, the interval of
   candidate − champion on the same windows lies entirely below 0 too. Otherwise the decision is
   "rejected" (not shown better than the base) or "kept" (better than the base, not shown better
   than the champion, which stays). Forgetting: with a retention set (windows from the base's own
   domain, `eval.retention_root`), a candidate whose mean retention AbsRel (adapter − base, pooled
   like the validation windows) exceeds `retention_margin` is "rejected" as well.

The candidate is the best of k configurations on the very runs it is then tested on, which would
let a configuration no better than the base through up to k times as often as one test does. The
intervals therefore use the Bonferroni level 1 − (1 − confidence) / k (k = `num_compared`; 98.3 %
for the default 95 % and k = 3), which keeps that chance at most (1 − confidence) / 2 for the whole
choice (for intervals that hold their level). The decision reports the level, the number of scenes and of windows it rests on.

The intervals are widened for few scenes (`lora_train.uncertainty`), so the number of validation
scenes bounds what can be shown. With the stand-in of `tests/sweeps/test_sweeps_selection.py` (8
windows per scene, top 3 of 8 configurations, 3 seeds), a true gain of 0.05 AbsRel is promoted in
1 % of sweeps with 2 scenes, 98 % with 3 and always with 4 or more; a gain of 0.01 in 8 % with 3
scenes, 50 % with 4, 85 % with 6 and always with 13. One scene never promotes. What the interval does not cover: (a) it is conditional on the trained
seeds: seed-to-seed noise enters through the averaging, and through the scenes it moves, but not
as a resampled level of its own; (b) the confirm runs reuse the validation windows the search chose
the top-k on, so a configuration that suits those particular scenes passes as better;
scene-disjoint folds (`cv_folds`) or a held-out set guard against that.

Pure Python and numpy (no Ray, MLflow or torch): the sweep driver turns reports into
`ConfirmRun`s and a decision into tags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lora_train.uncertainty import DEFAULT_RESAMPLES, Interval, cluster_bootstrap, paired_difference
from sweeps.pareto import ChampionRule, Constraint

WindowId = tuple[str, str, tuple[str, ...]]  # (scene, key view, companion views)
UNRANKED_STATUSES = ("failed", "diverged")  # a configuration that crashed or diverged is no candidate


@dataclass(frozen=True)
class SearchTrial:
    """A search trial as the ranking sees it.

    Attributes:
        trial_id: the Tune trial id (a configuration of the search).
        scores: metric name → the trial's best value of it (e.g. `{"val/abs_rel": 0.171}`).
        windows_hash: the validation windows it was scored on (`val.windows_hash`), if recorded.
        status: its `trial.status` (completed, early_stopped, failed, diverged, ...).
    """

    trial_id: str
    scores: Mapping[str, float]
    windows_hash: str | None = None
    status: str = "completed"


def search_ranking(trials: Sequence[SearchTrial], metric: str, mode: str,
                   windows_hash: str | None = None, *, rule: ChampionRule | None = None,
                   constraints: Sequence[Constraint] = ()) -> list[SearchTrial]:
    """The search trials best first by `metric` (`mode` "min" or "max"): those with a finite score,
    scored on `windows_hash` (when given) and neither failed nor diverged; ties by trial id.

    With a champion `rule` (`SweepSpace.champion_rule`, for multi-objective spaces) the rule's
    metric replaces `metric`/`mode`, and the trials that satisfy the sweep's `constraints` and the
    rule's `subject_to` come first, then the others by total violation (`ChampionRule.order`);
    `scores` then hold the rule's metric and every constrained metric (a missing one violates).
    """
    if rule is not None:
        metric, mode = rule.metric, rule.mode
    ranked = [t for t in trials
              if t.status not in UNRANKED_STATUSES and np.isfinite(t.scores.get(metric, np.nan))
              and (windows_hash is None or t.windows_hash == windows_hash)]
    if rule is not None:
        by_id = {t.trial_id: t for t in ranked}
        return [by_id[k] for k in rule.order({t.trial_id: t.scores for t in ranked}, constraints)]
    sign = 1.0 if mode == "min" else -1.0
    return sorted(ranked, key=lambda t: (sign * t.scores[metric], t.trial_id))


@dataclass(frozen=True, eq=False)
class WindowScores:
    """Per-window AbsRel of one model: `values[i]` `[W]` on `windows[i]`."""

    windows: tuple[WindowId, ...]
    values: np.ndarray

    @classmethod
    def from_records(cls, records: Sequence[dict]) -> WindowScores:
        """From `evaluate_windows` records (a `metrics.json` `per_window` list)."""
        windows = tuple((r["scene"], r["key_view"], tuple(r["companion_views"])) for r in records)
        if len(set(windows)) != len(windows):
            raise ValueError("WindowScores: a window is listed twice")
        return cls(windows, np.array([r["abs_rel"] for r in records], dtype=np.float64))

    def on(self, windows: Sequence[WindowId]) -> np.ndarray:
        """`[len(windows)]` values on `windows`, in their order (every one must have been evaluated)."""
        index = {w: i for i, w in enumerate(self.windows)}
        missing = [w for w in windows if w not in index]
        if missing:
            raise ValueError(f"{len(missing)} of {len(windows)} windows were not evaluated, e.g. {missing[0]}")
        return self.values[[index[w] for w in windows]]


@dataclass(frozen=True, eq=False)
class ConfirmRun:
    """One trained adapter and the frozen base, evaluated on the same windows."""

    adapter: WindowScores
    base: WindowScores

    def __post_init__(self):
        if self.adapter.windows != self.base.windows:
            raise ValueError("ConfirmRun: adapter and base were evaluated on different windows")

    @classmethod
    def from_report(cls, report: Mapping) -> ConfirmRun:
        """From an `evaluate_checkpoint(..., compare_base=True)` report (`metrics.json`)."""
        per_window = report["per_window"]
        return cls(WindowScores.from_records(per_window["adapter"]), WindowScores.from_records(per_window["base"]))


def _average_by_window(scores: Sequence[WindowScores]) -> WindowScores:
    """Mean over `scores` per window (finite values only), windows in order of first appearance."""
    windows = tuple(dict.fromkeys(w for s in scores for w in s.windows))
    position = {w: i for i, w in enumerate(windows)}
    total, count = np.zeros(len(windows)), np.zeros(len(windows))
    for s in scores:
        rows = np.array([position[w] for w in s.windows], dtype=np.int64)
        finite = np.isfinite(s.values)
        np.add.at(total, rows[finite], s.values[finite])
        np.add.at(count, rows[finite], 1)
    with np.errstate(invalid="ignore"):
        return WindowScores(windows, total / count)  # NaN where no run had a finite value


def mean_difference(run: ConfirmRun) -> float:
    """Mean adapter − base over the run's windows where both are finite."""
    return float(np.nanmean(run.adapter.values - run.base.values))


def pool_seeds(runs: Sequence[ConfirmRun]) -> ConfirmRun:
    """The confirm runs of one configuration as one: per window, the mean over the runs that
    evaluated it, for the adapter and for the base (see the module docstring)."""
    if not runs:
        raise ValueError("pool_seeds: no confirm run")
    return ConfirmRun(_average_by_window([r.adapter for r in runs]), _average_by_window([r.base for r in runs]))


def _paired(candidate: WindowScores, reference: WindowScores) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Candidate and reference values on the candidate's windows, and their scenes."""
    return candidate.values, reference.on(candidate.windows), [w[0] for w in candidate.windows]


@dataclass(frozen=True, eq=False)
class Candidate:
    """The configuration a confirm phase proposes, with its pooled runs."""

    config: str
    adapter: WindowScores  # pooled over the configuration's confirm runs
    base: WindowScores
    mean_delta: float  # mean adapter − base AbsRel over the pooled windows
    num_runs: int
    num_compared: int  # configurations it was chosen from (the Bonferroni k)


def choose_candidate(runs_by_config: Mapping[str, Sequence[ConfirmRun]]) -> Candidate:
    """The configuration with the lowest mean pooled adapter − base AbsRel.

    Args:
        runs_by_config: configuration id (e.g. the search trial it confirms) → its confirm runs.
            A configuration without runs (all failed) is not a choice; it still counts in
            `num_compared` since it was part of the comparison.
    """
    scored = []
    for config, runs in runs_by_config.items():
        if runs:
            pooled = pool_seeds(runs)
            scored.append((mean_difference(pooled), config, pooled, len(runs)))
    if not scored:
        raise ValueError("choose_candidate: no configuration has a confirm run")
    mean_delta, config, pooled, num_runs = min(scored, key=lambda item: (not np.isfinite(item[0]), item[0]))
    return Candidate(config=config, adapter=pooled.adapter, base=pooled.base, mean_delta=mean_delta,
                     num_runs=num_runs, num_compared=len(runs_by_config))


def pooled_intervals(runs: Sequence[ConfirmRun], **bootstrap) -> tuple[Interval, Interval]:
    """One configuration over its runs (`pool_seeds`): the 95 % interval (by default) of its mean
    AbsRel and of its mean adapter − base AbsRel (for reports; the decision uses its own level)."""
    pooled = pool_seeds(runs)
    scenes = [w[0] for w in pooled.adapter.windows]
    return (cluster_bootstrap(pooled.adapter.values, scenes, **bootstrap),
            paired_difference(pooled.adapter.values, pooled.base.values, scenes, **bootstrap))


@dataclass(frozen=True)
class PromotionDecision:
    """Outcome of `promotion_decision`; intervals at level `confidence` (Bonferroni-adjusted)."""

    decision: str  # "promoted", "kept" or "rejected"
    delta_vs_base: float  # mean candidate − base AbsRel
    delta_ci_low: float
    delta_ci_high: float
    num_scenes: int
    num_windows: int
    confidence: float
    reason: str  # one line
    delta_vs_champion: float | None = None  # candidate − champion, when a champion exists
    champion_ci_low: float | None = None
    champion_ci_high: float | None = None
    retention_delta: float | None = None  # candidate − base AbsRel on the retention set, when there is one
    retention_ci_low: float | None = None
    retention_ci_high: float | None = None

    def tags(self) -> dict[str, str]:
        """MLflow tags of the sweep's parent run (`champion.*`)."""
        tags = {"champion.decision": self.decision, "champion.delta_vs_base": f"{self.delta_vs_base:.6g}",
                "champion.delta_vs_base_ci_low": f"{self.delta_ci_low:.6g}",
                "champion.delta_vs_base_ci_high": f"{self.delta_ci_high:.6g}",
                "champion.confidence": f"{self.confidence:.6g}", "champion.num_scenes": str(self.num_scenes),
                "champion.num_windows": str(self.num_windows), "champion.reason": self.reason}
        if self.delta_vs_champion is not None:
            tags.update({"champion.delta_vs_champion": f"{self.delta_vs_champion:.6g}",
                         "champion.delta_vs_champion_ci_low": f"{self.champion_ci_low:.6g}",
                         "champion.delta_vs_champion_ci_high": f"{self.champion_ci_high:.6g}"})
        if self.retention_delta is not None:
            tags.update({"champion.retention_delta": f"{self.retention_delta:.6g}",
                         "champion.retention_delta_ci_low": f"{self.retention_ci_low:.6g}",
                         "champion.retention_delta_ci_high": f"{self.retention_ci_high:.6g}"})
        return tags


def promotion_decision(candidate: WindowScores, base: WindowScores, existing_champion: WindowScores | None = None,
                       *, num_compared: int = 1, confidence: float = 0.95,
                       num_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                       retention: ConfirmRun | None = None, retention_margin: float = math.inf) -> PromotionDecision:
    """Promote `candidate` only if it beats the base, and the existing champion, by the paired test,
    without forgetting the base's domain.

    Args:
        candidate: per-window AbsRel of the candidate (e.g. `Candidate.adapter`, pooled over seeds).
        base: the frozen base's per-window AbsRel; must cover the candidate's windows.
        existing_champion: the current champion's per-window AbsRel on (at least) the same windows,
            or None when the experiment has no champion yet.
        num_compared: configurations the candidate was chosen from (`Candidate.num_compared`).
        confidence: family-wise two-sided level; each interval uses 1 − (1 − confidence) / num_compared.
        num_resamples, seed: of the cluster bootstrap.
        retention: the candidate's adapter and the base on the retention set (pooled over seeds),
            or None without a retention set.
        retention_margin: the largest mean retention AbsRel increase (adapter − base) allowed.

    Returns:
        "rejected" unless the candidate − base interval lies below 0 and the mean retention change
        is at most `retention_margin`; else "kept" unless the candidate − champion interval (when a
        champion exists) lies below 0; else "promoted".

    Raises:
        ValueError: the base or the champion lacks some of the candidate's windows.
    """
    if num_compared < 1:
        raise ValueError(f"promotion_decision: num_compared must be >= 1, got {num_compared}")
    level = 1 - (1 - confidence) / num_compared
    bootstrap = {"confidence": level, "num_resamples": num_resamples, "seed": seed}
    vs_base = paired_difference(*_paired(candidate, base), **bootstrap)
    vs_champion: Interval | None = None
    kept_domain: Interval | None = None
    if retention is not None:
        kept_domain = paired_difference(*_paired(retention.adapter, retention.base), **bootstrap)
    if not vs_base.high < 0:
        decision, reason = "rejected", f"adapter - base AbsRel {vs_base} does not lie below 0"
    elif kept_domain is not None and not kept_domain.mean <= retention_margin:
        decision, reason = "rejected", (f"forgets the base's domain: retention AbsRel adapter - base {kept_domain} "
                                        f"exceeds the margin {retention_margin:+.4f}")
    elif existing_champion is None:
        decision, reason = "promoted", f"adapter - base AbsRel {vs_base} lies below 0; first champion"
    else:
        vs_champion = paired_difference(*_paired(candidate, existing_champion), **bootstrap)
        if vs_champion.high < 0:
            decision = "promoted"
            reason = f"adapter - base AbsRel {vs_base} and adapter - champion {vs_champion} lie below 0"
        else:
            decision = "kept"
            reason = (f"adapter - champion AbsRel {vs_champion} does not lie below 0 "
                      f"(adapter - base {vs_base} does)")
    return PromotionDecision(
        decision=decision, delta_vs_base=vs_base.mean, delta_ci_low=vs_base.low, delta_ci_high=vs_base.high,
        num_scenes=vs_base.num_scenes, num_windows=vs_base.num_windows, confidence=level, reason=reason,
        delta_vs_champion=vs_champion.mean if vs_champion else None,
        champion_ci_low=vs_champion.low if vs_champion else None,
        champion_ci_high=vs_champion.high if vs_champion else None,
        retention_delta=kept_domain.mean if kept_domain else None,
        retention_ci_low=kept_domain.low if kept_domain else None,
        retention_ci_high=kept_domain.high if kept_domain else None,
    )
