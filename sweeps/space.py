"""The sweep space: what one sweep searches, its budget and resources, and the rules they obey.

A space describes one sweep: its name, the metric to optimise, the budget, the resources of one
trial, the ASHA scheduler, the Optuna sampler, the base training config, and the parameters to
search. Parameters are training-config keys in dotted form (`optim.lr`); the Optuna search names
them with `/` (`optim/lr`) so that Ray unflattens them into a nested trial config. The categorical
`lora.strategy` axis comes from the `strategies` mapping, whose entries may carry conditional
parameters (e.g. a lower learning-rate range for strategy C) and custom target sets.

`sweeps.space_file.load_space` reads a space from YAML; the rules here (`field_problem`,
`cross_problems`) are applied both there (errors name the file and line) and by
`SweepSpace.with_overrides` (errors name the command-line flag).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_train.config import BUILTIN_STRATEGIES
from lora_train.errors import UserError
from sweeps.pareto import ChampionRule, Constraint, Criteria, Objective, metric_problem

CUSTOM_STRATEGY = "custom"
STRATEGY_KEY = "lora.strategy"
CUSTOM_TARGET_KEYS = ("lora.target_regex", "lora.block_ranges", "lora.layer_kinds")
ALPHA_RATIO_KEY = "lora.alpha_ratio"  # derived: lora.alpha = ratio * lora.rank
RANK_KEY = "lora.rank"
ALPHA_KEY = "lora.alpha"
CONDITIONAL_PREFIX = "by_strategy"  # Optuna name of a conditional parameter: by_strategy/C/optim/lr

# Keys a search may not vary: they decide what a trial is scored on (the validation protocol is
# set once, in the `validation:` section) or which data and base model it starts from.
PROTOCOL_KEYS = ("eval.num_views", "eval.width", "eval.max_windows", "eval.seed", "eval.scenes", "eval.align")
DATA_IDENTITY_KEYS = ("data.root", "data.scenes", "data.synthetic_family", "data.synthetic_scenes",
                      "data.synthetic_seed", "model.preset", "model.checkpoint")
LAUNCHERS = ("auto", "ray_train", "in_trial")  # how a trial runs lora_train (see SweepSpace.runs_in_trial)
AUTO = "auto"  # resources.gpus_per_trial / --gpus-per-trial: GPU share by predicted memory (sweeps/packing.py)
# The confirm phase and the champion rule (sweeps/confirm.py, sweeps/selection.py): the top_k search
# configurations are trained again with `seeds` new seeds (top_k or seeds 0: no confirm phase), on
# `cv_folds` scene-disjoint folds of the training scenes (0: on the sweep's validation windows); a
# candidate whose retention AbsRel rises by more than `retention_margin` over the base's is rejected.
SELECTION_DEFAULTS = {"top_k": 3, "seeds": 3, "cv_folds": 0, "retention_margin": 0.01}
CONFIRM_KEY = "confirm"  # trial-config key of a confirm run: its origin and training overrides, not searched
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
NAME_RULE = "letters, digits, '_', '.', '-' (at most 100, starting with a letter or digit)"

# Numeric fields of a space: (integer?, minimum, minimum excluded?).
FIELD_LIMITS = {
    "num_samples": (True, 1, False), "max_epochs": (True, 1, False), "max_concurrent": (True, 0, False),
    "gpus_per_trial": (False, 0, False), "cpus_per_trial": (False, 0, True),
    "workers_per_trial": (True, 1, False), "grace_period": (True, 1, False),
    "reduction_factor": (False, 1, True), "brackets": (True, 1, False), "max_failures": (True, -1, False),
}


def number_problem(value, *, integer: bool = False, minimum: float | None = None,
                   exclusive: bool = False) -> str | None:
    """What is wrong with `value` as a (finite) number of the given kind and minimum, or None."""
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        return f"expected an integer, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"expected a number, got {value!r}"
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        return f"must be {'>' if exclusive else '>='} {minimum}, got {value!r}"
    return None


def field_problem(name: str, value) -> str | None:
    """What is wrong with `value` for the numeric space field `name`, or None."""
    integer, minimum, exclusive = FIELD_LIMITS[name]
    return number_problem(value, integer=integer, minimum=minimum, exclusive=exclusive)


def cross_problems(space: "SweepSpace") -> list[tuple[tuple[str, ...], str]]:
    """Rules between fields: `[((fields involved...), message)]`, empty when the space is sound."""
    problems = []
    if space.pack_gpus and not space.runs_in_trial():
        problems.append((("gpus_per_trial", "workers_per_trial"), "gpus_per_trial auto sizes one-process trials; "
                         f"DDP trials (workers_per_trial {space.workers_per_trial}) need a number of GPUs"))
    if space.launcher == "in_trial" and space.workers_per_trial != 1:
        problems.append((("launcher", "workers_per_trial"), "launcher in_trial runs one process: it needs "
                         f"workers_per_trial 1, got {space.workers_per_trial} (use auto or ray_train for DDP)"))
    if space.grace_period > space.max_epochs:
        problems.append((("grace_period", "max_epochs"),
                         f"asha.grace_period {space.grace_period} exceeds budget.max_epochs {space.max_epochs}"))
    if space.brackets != 1:
        problems.append((("brackets",), f"the sweep's ASHA (sweeps/schedulers.py) has one bracket, got "
                         f"asha.brackets {space.brackets}; set 1"))
    for metric in (*space.criteria.metrics, *space.champion_rule.metrics):  # reported on this device?
        problem = metric_problem(metric, on_gpu=space.gpus_per_trial > 0, final_ok=True)
        if problem:
            problems.append((("gpus_per_trial",), problem))
            break
    return problems


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) training-config key.

    Attributes:
        key: dotted training-config key, e.g. `optim.lr` (or the derived `lora.alpha_ratio`).
        kind: `int` | `float` | `categorical` | `fixed`.
        low, high, log, step: numeric range (int/float).
        choices: categorical values.
        value: the fixed value.
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    value: Any = None

    def contains(self, value) -> bool:
        if self.kind == "fixed":
            return value == self.value
        if self.kind == "categorical":
            return value in self.choices
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            return False
        if self.kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return False
        return self.low <= value <= self.high

    def suggest(self, trial, name: str):
        """Ask an Optuna trial (or Ray's captor) for this parameter under `name`."""
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def describe(self) -> str:
        if self.kind == "fixed":
            return repr(self.value)
        if self.kind == "categorical":
            return "{" + ", ".join(map(str, self.choices)) + "}"
        return f"[{self.low}, {self.high}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class Strategy:
    """One value of the `lora.strategy` axis and the parameters that apply only with it."""

    label: str
    params: tuple[Param, ...] = ()

    @property
    def train_strategy(self) -> str:
        return self.label if self.label in BUILTIN_STRATEGIES else CUSTOM_STRATEGY


@dataclass
class SweepSpace:
    """A validated space file. `source_text` is the file as written (logged to MLflow)."""

    path: Path
    source_text: str
    name: str
    metric: str
    mode: str
    num_samples: int
    max_epochs: int
    max_concurrent: int
    gpus_per_trial: float
    cpus_per_trial: float
    workers_per_trial: int
    grace_period: int
    reduction_factor: float
    brackets: int
    sampler: dict
    max_failures: int
    base_config_path: Path | None
    base_overrides: dict
    params: tuple[Param, ...]
    strategies: tuple[Strategy, ...]
    points_to_evaluate: list[dict] = field(default_factory=list)
    launcher: str = "auto"
    validation: dict = field(default_factory=dict)  # the file's `validation:` keys (see protocol_overrides)
    selection: dict = field(default_factory=lambda: dict(SELECTION_DEFAULTS))  # see SELECTION_DEFAULTS
    # Several objectives (`objectives:`; empty: `metric`/`mode` alone), constraints, the champion
    # rule (None: the primary objective). `metric`/`mode` are always the primary objective.
    objectives: tuple[Objective, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    champion: ChampionRule | None = None
    # `gpus_per_trial: auto` (sweeps/packing.py): each trial gets the GPU share of its predicted peak
    # memory, at most `gpus_per_trial` (then 1); `gpu_memory_gib` is one GPU's memory (None: measured).
    pack_gpus: bool = False
    gpu_memory_gib: float | None = None

    @property
    def criteria(self) -> Criteria:
        """What the sweep optimises: the objectives (the primary first) and constraints."""
        return Criteria(self.objectives or (Objective(self.metric, self.mode),), self.constraints)

    @property
    def champion_rule(self) -> ChampionRule:
        return self.champion or ChampionRule(self.metric, self.mode)

    def runs_in_trial(self) -> bool:
        """True when the trial process trains itself instead of starting a Ray Train run.

        `auto` does so for one-worker trials: a `TorchTrainer` of one worker only adds a controller
        and a worker process (15-20 s of start-up per trial on a small machine) and no parallelism.
        """
        return self.launcher == "in_trial" or (self.launcher == "auto" and self.workers_per_trial == 1)

    def with_overrides(self, **changes) -> "SweepSpace":
        """A copy with command-line overrides (`num_samples=16`, `name="x"`), checked by the same
        rules as the space file; a mistake raises `UserError` naming the flag (`--num-samples`)."""
        def flag(name: str) -> str:
            return "--" + name.replace("_", "-")

        if "gpus_per_trial" in changes:  # "auto": packed by predicted memory, at most one GPU each
            auto = changes["gpus_per_trial"] == AUTO
            changes = {**changes, "gpus_per_trial": 1.0 if auto else changes["gpus_per_trial"]}
        for name, value in changes.items():
            if name == "name":
                problem = None if isinstance(value, str) and NAME_RE.match(value) else f"use {NAME_RULE}, got {value!r}"
            elif name in FIELD_LIMITS:
                problem = field_problem(name, value)
            else:
                raise TypeError(f"SweepSpace.with_overrides: {name} cannot be overridden")
            if problem:
                raise UserError(f"{flag(name)}: {problem}")
        if "gpus_per_trial" in changes:
            changes["pack_gpus"] = auto
        space = dataclasses.replace(self, **changes)
        for fields, message in cross_problems(space):
            changed = next((f for f in fields if f in changes), None)
            if changed is not None:
                raise UserError(f"{flag(changed)}: {message}")
        return space

    def protocol_overrides(self) -> dict[str, Any]:
        """The validation protocol every trial (and the base, and confirm runs) is scored with, as
        `eval.*` training-config overrides: the file's `validation:` keys, the others taken once
        from the base config (its `eval.*`, else its `data.num_views` / `data.width`)."""
        from lora_train.config import load_config, validation_protocol

        base = str(self.base_config_path) if self.base_config_path else None
        protocol = validation_protocol(load_config(base, dict(self.base_overrides)))
        protocol.update({k: v for k, v in self.validation.items() if k in protocol})
        return {f"eval.{k}": v for k, v in protocol.items()}

    def max_value(self, key: str, default: float) -> float:
        """The largest value `key` takes in any trial: `default` (the base config's) where the key is
        not searched, else the top of its range or choices."""
        values = [default]
        for param in (*self.params, *(p for s in self.strategies for p in s.params)):
            if param.key == key:
                values += [param.value] if param.kind == "fixed" else list(param.choices) \
                    if param.kind == "categorical" else [param.high]
        return max(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))

    def define_by_run(self) -> "DefineByRun":
        return DefineByRun(self.params, self.strategies)

    def strategy(self, label: str) -> Strategy:
        return next(s for s in self.strategies if s.label == label)

    def summary(self) -> dict:
        """Flat `{dotted key: description}` of the search space (MLflow parent params)."""
        out = {STRATEGY_KEY: "{" + ", ".join(s.label for s in self.strategies) + "}"}
        out.update({p.key: p.describe() for p in self.params})
        for s in self.strategies:
            out.update({f"{CONDITIONAL_PREFIX}.{s.label}.{p.key}": p.describe() for p in s.params})
        out.update({f"base.{k}": repr(v) for k, v in self.base_overrides.items()})
        out.update({f"validation.{k}": repr(v) for k, v in self.validation.items()})
        out.update({f"selection.{k}": repr(v) for k, v in self.selection.items()})
        if self.objectives:
            out["objectives"] = ", ".join(f"{o.metric} {o.mode}" for o in self.objectives)
        if self.constraints:
            out["constraints"] = ", ".join(c.label for c in self.constraints)
        if self.champion:
            out["champion"] = ", ".join([f"{self.champion.metric} {self.champion.mode}",
                                         *(c.label for c in self.champion.subject_to)])
        return out


class DefineByRun:
    """The Optuna define-by-run search space (picklable: Ray checkpoints the searcher with it).

    Calling it with an Optuna trial suggests `lora/strategy` first, then every general parameter
    the chosen strategy does not override, then that strategy's conditional parameters under
    `by_strategy/<label>/...`; fixed values are returned as constants.
    """

    def __init__(self, params, strategies):
        self.params = tuple(params)
        self.strategies = tuple(strategies)

    def __call__(self, trial) -> dict:
        labels = [s.label for s in self.strategies]
        label = trial.suggest_categorical(optuna_name(STRATEGY_KEY), labels)
        strategy = next(s for s in self.strategies if s.label == label)
        overridden = {p.key for p in strategy.params}
        constants = {}
        for param in self.params:
            if param.key in overridden:
                continue
            if param.kind == "fixed":
                constants[optuna_name(param.key)] = param.value
            else:
                param.suggest(trial, optuna_name(param.key))
        for param in strategy.params:
            name = conditional_name(label, param.key)
            if param.kind == "fixed":
                constants[name] = param.value
            else:
                param.suggest(trial, name)
        return constants


def optuna_name(key: str) -> str:
    return key.replace(".", "/")


def conditional_name(label: str, key: str) -> str:
    return f"{CONDITIONAL_PREFIX}/{label}/{optuna_name(key)}"


def trial_overrides(trial_config: dict, space: SweepSpace) -> dict:
    """Map a Ray trial config (nested, from the `/` names) to dotted training-config overrides.

    Applies the base overrides, the chosen strategy (custom target sets become
    `lora.strategy: custom` plus their settings) and the derived `lora.alpha = ratio * rank`.
    """
    flat = _flatten({k: v for k, v in trial_config.items() if k != CONFIRM_KEY})
    label = flat.pop(STRATEGY_KEY)
    values = {}
    for key, value in flat.items():
        prefix = f"{CONDITIONAL_PREFIX}.{label}."
        if key.startswith(prefix):
            values[key[len(prefix):]] = value
        elif not key.startswith(CONDITIONAL_PREFIX + "."):
            values[key] = value
    overrides = dict(space.base_overrides)
    overrides[STRATEGY_KEY] = space.strategy(label).train_strategy
    ratio = values.pop(ALPHA_RATIO_KEY, None)
    overrides.update(values)
    if ratio is not None:
        overrides[ALPHA_KEY] = float(ratio) * float(overrides[RANK_KEY])
    overrides["train.epochs"] = space.max_epochs
    overrides.update(trial_config.get(CONFIRM_KEY, {}).get("overrides", {}))  # a confirm run's seed and fold
    return overrides


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
