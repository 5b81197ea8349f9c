"""Ranking trials by several objectives under constraints: fronts, crowding, hypervolume.

A sweep scores a trial by its `Criteria`: objectives (`val/abs_rel` min, `adapter/trainable_params`
min, ...) and constraints (`cost/peak_gpu_gib <= 24`). Trials are ordered by

1. constrained non-dominated sorting (NSGA-II fronts, Deb 2000 constrained domination): a feasible
   trial beats an infeasible one, two infeasible trials compare by total violation alone, two
   feasible ones by Pareto dominance;
2. within a front, crowding distance, largest first (spread-out trials first; NSGA-II);
3. the key (trial id), ascending, so that the order never depends on the input order.

`rank` gives that total order; the multi-objective ASHA scheduler promotes by it, `pareto_front`
names the trials to tag, `hypervolume_2d` measures a front in a stated box (`hypervolume_box`
derives one from the points), `ChampionRule` orders champion candidates (feasible first, then one
metric). `TRIAL_METRICS` lists the metrics a trial reports, i.e. what criteria may name. Pure numpy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MODES = ("min", "max")
SCALES = ("linear", "log")
OPERATORS = ("<=", ">=")
_CONSTRAINT_RE = re.compile(r"^\s*([^<>=!\s]+)\s*([<>=!]+)\s*(\S+)\s*$")

# The metrics a trial reports with every epoch result, to Tune and (under the same name, at
# step = epoch) to MLflow: the names objectives, constraints and champion rules may use.
# `val/*` is every validation metric lora_train computes; the others are named one by one, with
# the device whose trials report them (None: every trial). `adapter/trainable_params` comes from
# the trial reporter (sweeps/trial_reporter.py), `cost/peak_gpu_gib` is derived there from
# lora_train's `cost/peak_mem_mb` on GPU trials.
TRIAL_METRIC_FAMILIES = ("val/",)
TRIAL_METRICS = {
    "adapter/trainable_params": None,
    "cost/cpu_seconds": "cpu",
    "cost/gpu_seconds": "gpu",
    "cost/peak_gpu_gib": "gpu",
    "cost/peak_mem_mb": None,
    "time/wall_s": None,
}
# Metrics of the final base-vs-adapter evaluation, which only a trial's last result carries
# (`eval/abs_rel_delta`, `retention/abs_rel_delta`, ...; `final_eval_metrics` in the reporter).
# They can be constraints (enforced where they are known: at the end, not at ASHA's rungs) and
# champion conditions, not objectives (ASHA ranks objectives at every rung).
FINAL_METRIC_FAMILIES = ("eval/", "retention/")
# Objectives spanning decades (sizes, costs) are normalised on a log scale for the hypervolume.
LOG_SCALE_PREFIXES = ("adapter/", "cost/", "time/")


def is_final_metric(name: str) -> bool:
    return name.startswith(FINAL_METRIC_FAMILIES)


def metric_problem(name, *, on_gpu: bool, final_ok: bool = False) -> str | None:
    """What is wrong with `name` as a metric of a sweep's criteria, or None; `final_ok`: a metric
    of the last result only (`FINAL_METRIC_FAMILIES`) will do (a constraint, not an objective)."""
    if not isinstance(name, str) or not name:
        return f"expected a metric name like val/abs_rel, got {name!r}"
    family = next((f for f in TRIAL_METRIC_FAMILIES + FINAL_METRIC_FAMILIES if name.startswith(f)), None)
    if family is not None and len(name) > len(family):
        if is_final_metric(name) and not final_ok:
            return (f"{name} comes with a trial's last result only (the final evaluation), so ASHA cannot "
                    "rank by it: make it a constraint or a champion condition")
        return None
    if name not in TRIAL_METRICS:
        return (f"unknown metric {name!r}: a trial reports val/*, {', '.join(sorted(TRIAL_METRICS))} "
                f"and, with its last result, {', '.join(f + '*' for f in FINAL_METRIC_FAMILIES)}")
    device = TRIAL_METRICS[name]
    if device is not None and (device == "gpu") != on_gpu:
        return (f"{name} is reported by {device.upper()} trials only, and this sweep's trials run on "
                f"{'GPUs' if on_gpu else 'CPUs'} (resources.gpus_per_trial)")
    return None


def default_scale(metric: str) -> str:
    return "log" if metric.startswith(LOG_SCALE_PREFIXES) else "linear"


@dataclass(frozen=True)
class Objective:
    """One metric to optimise.

    Attributes:
        metric: reported metric name, e.g. `val/abs_rel`.
        mode: `min` or `max`.
        scale: `linear` or `log`: how `hypervolume_2d` normalises it (log suits parameter counts
            and costs, which span decades). Ranking is scale-free and ignores it.
    """

    metric: str
    mode: str = "min"
    scale: str = "linear"

    def __post_init__(self):
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"objective metric must be a non-empty name, got {self.metric!r}")
        if self.mode not in MODES:
            raise ValueError(f"objective {self.metric}: mode must be min or max, got {self.mode!r}")
        if self.scale not in SCALES:
            raise ValueError(f"objective {self.metric}: scale must be linear or log, got {self.scale!r}")

    def signed(self, value: float) -> float:
        """`value` oriented so that smaller is better."""
        return value if self.mode == "min" else -value


@dataclass(frozen=True)
class Constraint:
    """`metric op bound`, e.g. `cost/peak_gpu_gib <= 24`.

    The violation of a value is how far it lies beyond the bound, relative to `|bound|` when the
    bound is not 0 (Deb 2000 normalises constraints so that no unit dominates the sum); a missing
    or non-finite value violates by infinity.
    """

    metric: str
    op: str
    bound: float

    def __post_init__(self):
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"constraint metric must be a non-empty name, got {self.metric!r}")
        if self.op not in OPERATORS:
            raise ValueError(f"constraint {self.metric}: operator must be <= or >=, got {self.op!r}")
        bound = self.bound
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            raise ValueError(f"constraint {self.metric}: bound must be a finite number, got {bound!r}")

    @classmethod
    def parse(cls, text: str) -> "Constraint":
        """`"cost/peak_gpu_gib <= 24"` → `Constraint("cost/peak_gpu_gib", "<=", 24.0)`; a malformed
        text raises `ValueError` with a one-line message naming it."""
        match = _CONSTRAINT_RE.match(text) if isinstance(text, str) else None
        if not match:
            raise ValueError(f"constraint {text!r}: expected 'METRIC <= BOUND' or 'METRIC >= BOUND'")
        metric, op, bound = match.groups()
        try:
            number = float(bound)
        except ValueError:
            raise ValueError(f"constraint {text!r}: bound {bound!r} is not a number") from None
        return cls(metric, op, number)

    @property
    def label(self) -> str:
        """`cost/peak_gpu_gib <= 24`: the constraint as written (its name in Optuna)."""
        return f"{self.metric} {self.op} {self.bound:g}"

    def excess(self, value: float) -> float:
        """How far `value` lies beyond the bound, in the metric's units: <= 0 when satisfied (the
        sign convention of Optuna's `Trial.set_constraint`)."""
        return value - self.bound if self.op == "<=" else self.bound - value

    def violation(self, value: float) -> float:
        if not math.isfinite(value):
            return math.inf
        return max(0.0, self.excess(value)) / (abs(self.bound) or 1.0)


@dataclass(frozen=True)
class Ranked:
    """A trial's place in a ranking: `position` 0 is best; `front` 0 is the first front
    (infeasible trials are in fronts after every feasible one); `crowding` is the NSGA-II crowding
    distance within its front (inf at a front's ends, 0 for infeasible trials)."""

    key: str
    position: int
    front: int
    crowding: float
    violation: float


def dominance_matrix(values: np.ndarray, violations: np.ndarray) -> np.ndarray:
    """`D[i, j]`: point i constrained-dominates point j (Deb 2000).

    Args:
        values: (n, k) objective values, smaller is better.
        violations: (n,) total constraint violation, 0 for a feasible point.
    """
    feasible = violations == 0
    le = (values[:, None, :] <= values[None, :, :]).all(axis=2)
    lt = (values[:, None, :] < values[None, :, :]).any(axis=2)
    pareto = le & lt & feasible[:, None] & feasible[None, :]
    feasible_over_infeasible = feasible[:, None] & ~feasible[None, :]
    both_infeasible = ~feasible[:, None] & ~feasible[None, :]
    less_violation = both_infeasible & (violations[:, None] < violations[None, :])
    return pareto | feasible_over_infeasible | less_violation


def non_dominated_fronts(values: np.ndarray, violations: np.ndarray) -> np.ndarray:
    """(n,) front index of every point: 0 for points no other point dominates, 1 for those only
    front-0 points dominate, and so on (NSGA-II fast non-dominated sorting)."""
    dominates = dominance_matrix(values, violations)
    dominated_by = dominates.sum(axis=0)
    fronts = np.full(len(values), -1)
    front = 0
    current = np.flatnonzero(dominated_by == 0)
    while current.size:
        fronts[current] = front
        dominated_by = dominated_by - dominates[current].sum(axis=0)
        current = np.flatnonzero((dominated_by == 0) & (fronts == -1))
        front += 1
    return fronts


def crowding_distance(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(m,) NSGA-II crowding distance of the points of one front.

    For every objective with a non-zero range, the points are sorted by (value, `order`), the two
    ends get infinity and every other point the gap between its neighbours over the range. Fronts
    of one or two points are all ends. `order` (m,) breaks ties between equal values so that the
    result does not depend on the input order.
    """
    m = len(values)
    if m <= 2:
        return np.full(m, math.inf)
    distance = np.zeros(m)
    for column in values.T:
        span = column.max() - column.min()
        if span == 0:
            continue
        idx = np.lexsort((order, column))
        distance[idx[0]] = distance[idx[-1]] = math.inf
        distance[idx[1:-1]] += (column[idx[2:]] - column[idx[:-2]]) / span
    return distance


def rank(values: Sequence[Sequence[float]], violations: Sequence[float], keys: Sequence[str]) -> list[Ranked]:
    """The total order of points: front, then crowding distance descending, then key ascending.

    Args:
        values: (n, k) objective values, smaller is better (see `Objective.signed`). A point with a
            non-finite value cannot be compared and counts as infeasible with infinite violation.
        violations: (n,) total constraint violation (0 = feasible).
        keys: (n,) unique, mutually comparable keys (trial ids).

    Returns:
        One `Ranked` per point, best first.
    """
    keys = list(keys)
    if len(set(keys)) != len(keys):
        raise ValueError("rank: keys must be unique")
    if not keys:
        return []
    values = np.asarray(values, dtype=float).reshape(len(keys), -1)
    violations = np.asarray(violations, dtype=float).reshape(len(keys))
    if (violations < 0).any() or np.isnan(violations).any():
        raise ValueError("rank: violations must be >= 0")
    violations = np.where(np.isfinite(values).all(axis=1), violations, math.inf)
    values = np.where(np.isfinite(values), values, 0.0)  # only compared when feasible, i.e. finite

    order = np.empty(len(keys), dtype=int)
    order[sorted(range(len(keys)), key=keys.__getitem__)] = np.arange(len(keys))
    fronts = non_dominated_fronts(values, violations)
    crowding = np.zeros(len(keys))
    for front in np.unique(fronts):
        members = np.flatnonzero(fronts == front)
        if violations[members[0]] == 0:  # fronts are all-feasible or all-infeasible
            crowding[members] = crowding_distance(values[members], order[members])
    best_first = np.lexsort((order, -crowding, fronts))
    return [Ranked(keys[i], position, int(fronts[i]), float(crowding[i]), float(violations[i]))
            for position, i in enumerate(best_first)]


@dataclass(frozen=True)
class Criteria:
    """What a sweep optimises: objectives and constraints on reported metrics."""

    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "objectives", tuple(self.objectives))
        object.__setattr__(self, "constraints", tuple(self.constraints))
        if not self.objectives:
            raise ValueError("criteria need at least one objective")
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives name a metric twice: {names}")

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric the criteria read, objectives first, without repeats."""
        return tuple(dict.fromkeys([o.metric for o in self.objectives] + [c.metric for c in self.constraints]))

    def at_rungs(self) -> Criteria:
        """The criteria ASHA can apply at its rungs: without constraints on final-only metrics."""
        return Criteria(self.objectives, tuple(c for c in self.constraints if not is_final_metric(c.metric)))

    def signed(self, metrics: Mapping[str, float]) -> tuple[float, ...]:
        """The objective values of a trial, smaller is better; NaN where a metric is missing."""
        return tuple(o.signed(_number(metrics.get(o.metric))) for o in self.objectives)

    def violation(self, metrics: Mapping[str, float]) -> float:
        """Total constraint violation of a trial (0 = feasible, inf if a constrained metric is missing)."""
        total = sum(c.violation(_number(metrics.get(c.metric))) for c in self.constraints)
        return total if all(math.isfinite(v) for v in self.signed(metrics)) else math.inf

    def excesses(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Optuna's constraint values of a trial (`Trial.set_constraint`: <= 0 when satisfied), by
        `Constraint.label`; a missing or non-finite value counts as infinitely violated."""
        out = {}
        for c in self.constraints:
            value = _number(metrics.get(c.metric))
            out[c.label] = c.excess(value) if math.isfinite(value) else math.inf
        return out

    def rank(self, rows: Mapping[str, Mapping[str, float]]) -> list[Ranked]:
        """Rank trials given as `{trial_id: {metric: value}}`, best first (see `rank`)."""
        keys = list(rows)
        return rank([self.signed(rows[k]) for k in keys], [self.violation(rows[k]) for k in keys], keys)

    def hypervolume(self, rows: Mapping[str, Mapping[str, float]], *, reference: Sequence[float],
                    ideal: Sequence[float]) -> float:
        """`hypervolume_2d` of the feasible trials among `rows` (two objectives only)."""
        feasible = [[r[o.metric] for o in self.objectives] for r in rows.values() if self.violation(r) == 0]
        return hypervolume_2d(feasible, self.objectives, reference=reference, ideal=ideal)


def _number(value) -> float:
    return math.nan if value is None else float(value)


def pareto_front(criteria: Criteria, rows: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Keys of the non-dominated feasible trials, in ranking order (to tag `sweep.pareto=true`).
    Empty when no trial is feasible: infeasible trials are never on the front."""
    return [r.key for r in criteria.rank(rows) if r.front == 0 and r.violation == 0]


@dataclass(frozen=True)
class ChampionRule:
    """Which trials a sweep proposes as champion (space file `champion:`): the best `metric`
    (`mode`) among the trials that satisfy the sweep's constraints and `subject_to`. The default
    rule is the primary objective with no extra constraint."""

    metric: str
    mode: str = "min"
    subject_to: tuple[Constraint, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "subject_to", tuple(self.subject_to))
        if self.mode not in MODES:
            raise ValueError(f"champion {self.metric}: mode must be min or max, got {self.mode!r}")

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([self.metric] + [c.metric for c in self.subject_to]))

    def order(self, rows: Mapping[str, Mapping[str, float]], constraints: Sequence[Constraint] = ()) -> list[str]:
        """Keys of `rows` (`{trial: {metric: value}}`), best candidate first: the trials that violate
        none of `constraints` (the sweep's) and `subject_to`, by `metric`; then the others by total
        violation, then `metric`. A missing or non-finite `metric` comes last in its group; ties go
        by key."""
        everything = (*constraints, *self.subject_to)

        def key(k):
            row = rows[k]
            violation = sum(c.violation(_number(row.get(c.metric))) for c in everything)
            value = _number(row.get(self.metric))
            signed = value if self.mode == "min" else -value
            finite = math.isfinite(signed)
            return violation > 0, violation, not finite, signed if finite else 0.0, k

        return sorted(rows, key=key)


def hypervolume_2d(points: Sequence[Sequence[float]], objectives: Sequence[Objective], *,
                   reference: Sequence[float], ideal: Sequence[float]) -> float:
    """Area of the objective space that `points` dominate, inside the box from `ideal` to `reference`.

    Each objective is normalised to `u = (g(v) - g(ideal)) / (g(reference) - g(ideal))`, with
    `g = log` for `scale: log` objectives and the identity otherwise, so `u = 0` at the ideal and
    `u = 1` at the reference, for `min` and `max` objectives alike. The result is the area of the
    union of the rectangles `[u1, 1] x [u2, 1]`: 1 for a point at the ideal, 0 for points no
    better than the reference in some objective, unchanged by dominated points. Values are
    comparable only at the same `reference` and `ideal`: state them next to the number.

    Args:
        points: (n, 2) objective values in the metrics' own units and directions (feasible trials).
        objectives: the two objectives, in the order of the point coordinates.
        reference: (2,) the worst values that still count (e.g. the base model's AbsRel and the
            largest adapter the space allows); must be worse than `ideal` in both objectives.
        ideal: (2,) the values that map to 0 (e.g. AbsRel 0, the smallest adapter).
    """
    if len(objectives) != 2 or len(reference) != 2 or len(ideal) != 2:
        raise ValueError("hypervolume_2d: needs exactly two objectives, reference and ideal values")
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    normalised = np.empty_like(points)
    for j, objective in enumerate(objectives):
        ref, best, column = float(reference[j]), float(ideal[j]), points[:, j]
        if not (objective.signed(ref) > objective.signed(best)):
            raise ValueError(f"hypervolume_2d: reference {ref} must be worse than ideal {best} for "
                             f"{objective.metric} ({objective.mode})")
        if not np.isfinite(column).all():
            raise ValueError(f"hypervolume_2d: non-finite value of {objective.metric}")
        if objective.scale == "log":
            if min(ref, best) <= 0 or (column <= 0).any():
                raise ValueError(f"hypervolume_2d: {objective.metric} is on a log scale: values must be > 0")
            ref, best, column = math.log(ref), math.log(best), np.log(column)
        normalised[:, j] = (column - best) / (ref - best)
    inside = normalised[(normalised < 1).all(axis=1)]
    area, lowest_u2 = 0.0, 1.0
    for u1, u2 in inside[np.lexsort((inside[:, 1], inside[:, 0]))]:
        if u2 < lowest_u2:  # not dominated by a point with smaller u1
            area += (1.0 - u1) * (lowest_u2 - u2)
            lowest_u2 = u2
    return float(area)


def hypervolume_box(objectives: Sequence[Objective], points: Sequence[Sequence[float]],
                    margin: float = 0.1) -> tuple[list[float], list[float]]:
    """(reference, ideal) for `hypervolume_2d` spanning `points`: per objective, the ideal is the
    best value among them and the reference the worst, moved `margin` of the span further out on
    the objective's scale (so the worst points still add area); a span of 0 is taken as
    `margin * |value|` (or `margin`). Both are in the metrics' own units.

    Args:
        points: (n, k) objective values (n >= 1), in the metrics' units and directions.
    """
    reference, ideal = [], []
    for j, objective in enumerate(objectives):
        column = [float(p[j]) for p in points]
        log = objective.scale == "log"
        scaled = [objective.signed(math.log(v) if log else v) for v in column]  # smaller is better
        best, worst = min(scaled), max(scaled)
        far = worst + (margin * (worst - best) or margin * abs(worst) or margin)
        back = [objective.signed(u) for u in (far, best)]
        reference.append(math.exp(back[0]) if log else back[0])
        ideal.append(math.exp(back[1]) if log else back[1])
    return reference, ideal
