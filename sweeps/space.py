"""The sweep's space file: parse, validate (one-line errors with YAML line numbers), search.

A space file describes one sweep: its name, the metric to optimise, the budget, the resources of
one trial, the ASHA scheduler, the Optuna sampler, the base training config, and the parameters to
search. Parameters are training-config keys in dotted form (`optim.lr`); the Optuna search names
them with `/` (`optim/lr`) so that Ray unflattens them into a nested trial config. The categorical
`lora.strategy` axis comes from the `strategies` mapping, whose entries may carry conditional
parameters (e.g. a lower learning-rate range for strategy C) and custom target sets.

Everything is validated before anything starts: a mistake raises `UserError` with one line naming
the file, the line and the key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lora_train.errors import UserError

BUILTIN_STRATEGIES = ("A", "B", "C")
CUSTOM_STRATEGY = "custom"
STRATEGY_KEY = "lora.strategy"
CUSTOM_TARGET_KEYS = ("lora.target_regex", "lora.block_ranges", "lora.layer_kinds")
ALPHA_RATIO_KEY = "lora.alpha_ratio"  # derived: lora.alpha = ratio * lora.rank
RANK_KEY = "lora.rank"
ALPHA_KEY = "lora.alpha"
CONDITIONAL_PREFIX = "by_strategy"  # Optuna name of a conditional parameter: by_strategy/C/optim/lr

_TOP_KEYS = {
    "name", "metric", "mode", "budget", "resources", "asha", "sampler", "failure",
    "base_config", "parameters", "strategies", "points_to_evaluate",
}
_SECTION_DEFAULTS = {
    "budget": {"num_samples": 8, "max_epochs": 4, "max_concurrent": 0},
    "resources": {"gpus_per_trial": 0, "cpus_per_trial": 1, "workers_per_trial": 1, "launcher": "auto"},
    "asha": {"grace_period": 1, "reduction_factor": 2, "brackets": 1},
    "sampler": {"type": "tpe", "multivariate": True, "group": True, "seed": 0, "n_startup_trials": 4},
    "failure": {"max_failures": 1},
}
LAUNCHERS = ("auto", "ray_train", "in_trial")  # how a trial runs lora_train (see SweepSpace.runs_in_trial)
_SPEC_KEYS = {
    "int": {"type", "low", "high", "log", "step"},
    "float": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
    "fixed": {"type", "value"},
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


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

    def runs_in_trial(self) -> bool:
        """True when the trial process trains itself instead of starting a Ray Train run.

        `auto` does so for one-worker trials: a `TorchTrainer` of one worker only adds a controller
        and a worker process (15-20 s of start-up per trial on a small machine) and no parallelism.
        """
        return self.launcher == "in_trial" or (self.launcher == "auto" and self.workers_per_trial == 1)

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
    flat = _flatten(trial_config)
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
    return overrides


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ------------------------------------------------------------------------------------ parsing


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


class _Doc:
    """Parsed YAML plus the line of every node, so errors can say where."""

    def __init__(self, path: Path, text: str):
        self.path = path
        try:
            node = yaml.compose(text, Loader=_Loader)
            self.data = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err)
            raise UserError(f"{path}{line}: invalid YAML: {problem}") from None
        self.lines: dict[tuple, int] = {}
        if node is not None:
            self._index(node, ())

    def _index(self, node, path):
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    self.lines[path + (key,)] = key_node.start_mark.line + 1
                    self.fail(path + (key,), "duplicate key")
                seen.add(key)
                self._index(value_node, path + (key,))
                self.lines[path + (key,)] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._index(item, path + (i,))

    def fail(self, path: tuple, message: str):
        line = None
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                line = self.lines[path[:n]]
                break
        where = f"{self.path}:{line}" if line else str(self.path)
        key = _key_name(path)
        raise UserError(f"{where}: {key + ': ' if key else ''}{message}")


def _key_name(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_keys(doc, path, mapping, allowed):
    for key in mapping:
        if str(key) not in allowed:
            doc.fail(path + (str(key),), f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _mapping(doc, path, value, default=None):
    if value is None and default is not None:
        return default
    if not isinstance(value, dict):
        doc.fail(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _number(doc, path, value, *, integer=False, minimum=None, exclusive=False):
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        doc.fail(path, f"expected an integer, got {value!r}")
    if not _is_number(value):
        doc.fail(path, f"expected a number, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        doc.fail(path, f"must be {'>' if exclusive else '>='} {minimum}, got {value!r}")
    return value


def _section(doc, name, raw) -> dict:
    defaults = _SECTION_DEFAULTS[name]
    section = _mapping(doc, (name,), raw.get(name), {})
    _check_keys(doc, (name,), section, set(defaults))
    return {**defaults, **section}


def _param(doc, path, key, raw) -> Param:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        doc.fail(path, "parameter names are dotted training-config keys like optim.lr")
    if not isinstance(raw, dict):
        if isinstance(raw, list):
            doc.fail(path, "a list is ambiguous here: write {type: categorical, choices: [...]} "
                     "or {type: fixed, value: [...]}")
        return Param(key, "fixed", value=raw)
    kind = raw.get("type", "categorical" if "choices" in raw else None)
    if kind is None:
        doc.fail(path, "missing 'type' (int, float, categorical or fixed)")
    if kind not in _SPEC_KEYS:
        doc.fail(path + ("type",), f"unknown type {kind!r} (int, float, categorical or fixed)")
    _check_keys(doc, path, raw, _SPEC_KEYS[kind])
    if kind == "fixed":
        if "value" not in raw:
            doc.fail(path, "missing 'value'")
        return Param(key, "fixed", value=raw["value"])
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list):
            doc.fail(path + ("choices",), f"expected a list of choices, got {choices!r}")
        if not choices:
            doc.fail(path + ("choices",), "empty list of choices")
        for i, c in enumerate(choices):
            if not (c is None or isinstance(c, (bool, int, float, str))):
                doc.fail(path + ("choices", i), f"choices must be scalars, got {c!r}")
        if len(set(map(repr, choices))) != len(choices):
            doc.fail(path + ("choices",), "duplicate choices")
        return Param(key, "categorical", choices=tuple(choices))
    for bound in ("low", "high"):
        if bound not in raw:
            doc.fail(path, f"missing '{bound}'")
        _number(doc, path + (bound,), raw[bound], integer=kind == "int")
    low, high = raw["low"], raw["high"]
    if low > high:
        doc.fail(path, f"empty range: low {low!r} > high {high!r}")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        doc.fail(path + ("log",), f"expected true or false, got {log!r}")
    if log and low <= 0:
        doc.fail(path + ("low",), f"a log range needs low > 0, got {low!r}")
    step = raw.get("step")
    if step is not None:
        _number(doc, path + ("step",), step, integer=kind == "int", minimum=0, exclusive=True)
        if log:
            doc.fail(path + ("step",), "step cannot be combined with log")
    return Param(key, kind, low=low, high=high, log=log, step=step)


def _params(doc, path, raw) -> list[Param]:
    raw = _mapping(doc, path, raw, {})
    params = []
    for key, spec in raw.items():
        if key == STRATEGY_KEY:
            doc.fail(path + (key,), "the strategy axis is the top-level 'strategies' mapping")
        params.append(_param(doc, path + (str(key),), key, spec))
    keys = {p.key for p in params}
    if ALPHA_RATIO_KEY in keys and ALPHA_KEY in keys:
        doc.fail(path + (ALPHA_RATIO_KEY,), f"set either {ALPHA_KEY} or {ALPHA_RATIO_KEY}, not both")
    return params


def _strategies(doc, raw) -> list[Strategy]:
    raw = raw.get("strategies")
    if raw is None:
        doc.fail(("strategies",), "missing: list the LoRA strategies to search (A, B, C or custom sets)")
    if isinstance(raw, list):
        raw = {label: {} for label in raw}
    raw = _mapping(doc, ("strategies",), raw)
    if not raw:
        doc.fail(("strategies",), "empty: list at least one strategy")
    out = []
    for label, entry in raw.items():
        path = ("strategies", str(label))
        label = str(label)
        if not _NAME_RE.match(label) or "/" in label:
            doc.fail(path, f"bad strategy label {label!r}")
        params = _params(doc, path, entry)
        is_custom = label not in BUILTIN_STRATEGIES
        has_targets = any(p.key in CUSTOM_TARGET_KEYS for p in params)
        if is_custom and not has_targets:
            doc.fail(path, f"unknown strategy {label!r}: use A, B, C, or a custom target set "
                     f"that sets one of {', '.join(CUSTOM_TARGET_KEYS)}")
        out.append(Strategy(label, tuple(params)))
    return out


def _points(doc, raw, params, strategies) -> list[dict]:
    points = raw.get("points_to_evaluate") or []
    if not isinstance(points, list):
        doc.fail(("points_to_evaluate",), "expected a list of {dotted key: value} mappings")
    by_label = {s.label: s for s in strategies}
    general = {p.key: p for p in params}
    out = []
    for i, point in enumerate(points):
        path = ("points_to_evaluate", i)
        point = _mapping(doc, path, point)
        label = point.get(STRATEGY_KEY)
        if label is None and len(strategies) == 1:
            label = strategies[0].label
        if label is None:
            doc.fail(path, f"missing {STRATEGY_KEY} (one of {', '.join(by_label)})")
        if str(label) not in by_label:
            doc.fail(path + (STRATEGY_KEY,), f"unknown strategy {label!r} (one of {', '.join(by_label)})")
        strategy = by_label[str(label)]
        conditional = {p.key: p for p in strategy.params}
        flat = {optuna_name(STRATEGY_KEY): strategy.label}
        for key, value in point.items():
            if key == STRATEGY_KEY:
                continue
            param = conditional.get(key) or general.get(key)
            if param is None:
                doc.fail(path + (str(key),), "not a searched parameter of this space")
            if param.kind == "fixed":
                doc.fail(path + (str(key),), "is fixed in this space; it cannot be set per point")
            if not param.contains(value):
                doc.fail(path + (str(key),), f"{value!r} is outside the range {param.describe()}")
            name = conditional_name(strategy.label, key) if key in conditional else optuna_name(key)
            flat[name] = value
        out.append(flat)
    return out


def load_space(path: str | Path, *, validate_config: bool = True) -> SweepSpace:
    """Read and validate a space file.

    Args:
        path: the space YAML.
        validate_config: also check every parameter key and value against the training config
            (`lora_train.config.load_config`), one trial of each strategy at a time.

    Raises:
        UserError: one line naming the file, line and key of the first mistake.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--space: no such file: {path}")
    text = path.read_text()
    doc = _Doc(path, text)
    raw = doc.data
    if not isinstance(raw, dict):
        doc.fail((), "the space file must be a mapping of sections (name, budget, parameters, ...)")
    _check_keys(doc, (), raw, _TOP_KEYS)

    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        doc.fail(("name",), f"expected a name of letters, digits, '_', '.', '-', got {name!r}")
    metric = raw.get("metric", "val/abs_rel")
    if not isinstance(metric, str) or not metric:
        doc.fail(("metric",), f"expected a metric name like val/abs_rel, got {metric!r}")
    mode = raw.get("mode", "min")
    if mode not in ("min", "max"):
        doc.fail(("mode",), f"expected min or max, got {mode!r}")

    budget = _section(doc, "budget", raw)
    _number(doc, ("budget", "num_samples"), budget["num_samples"], integer=True, minimum=1)
    _number(doc, ("budget", "max_epochs"), budget["max_epochs"], integer=True, minimum=1)
    _number(doc, ("budget", "max_concurrent"), budget["max_concurrent"], integer=True, minimum=0)
    resources = _section(doc, "resources", raw)
    _number(doc, ("resources", "gpus_per_trial"), resources["gpus_per_trial"], minimum=0)
    _number(doc, ("resources", "cpus_per_trial"), resources["cpus_per_trial"], minimum=0, exclusive=True)
    _number(doc, ("resources", "workers_per_trial"), resources["workers_per_trial"], integer=True, minimum=1)
    if resources["launcher"] not in LAUNCHERS:
        doc.fail(("resources", "launcher"), f"expected one of {', '.join(LAUNCHERS)}, got {resources['launcher']!r}")
    if resources["launcher"] == "in_trial" and resources["workers_per_trial"] != 1:
        doc.fail(("resources", "launcher"), "in_trial runs one process: it needs workers_per_trial: 1 "
                 "(use auto or ray_train for DDP)")
    asha = _section(doc, "asha", raw)
    _number(doc, ("asha", "grace_period"), asha["grace_period"], integer=True, minimum=1)
    _number(doc, ("asha", "reduction_factor"), asha["reduction_factor"], minimum=1, exclusive=True)
    _number(doc, ("asha", "brackets"), asha["brackets"], integer=True, minimum=1)
    if asha["grace_period"] > budget["max_epochs"]:
        doc.fail(("asha", "grace_period"), f"{asha['grace_period']} exceeds budget.max_epochs "
                 f"({budget['max_epochs']})")
    sampler = _section(doc, "sampler", raw)
    if sampler["type"] not in ("tpe", "random"):
        doc.fail(("sampler", "type"), f"expected tpe or random, got {sampler['type']!r}")
    for flag in ("multivariate", "group"):
        if not isinstance(sampler[flag], bool):
            doc.fail(("sampler", flag), f"expected true or false, got {sampler[flag]!r}")
    if sampler["group"] and not sampler["multivariate"]:
        doc.fail(("sampler", "group"), "group: true needs multivariate: true")
    _number(doc, ("sampler", "seed"), sampler["seed"], integer=True, minimum=0)
    _number(doc, ("sampler", "n_startup_trials"), sampler["n_startup_trials"], integer=True, minimum=0)
    failure = _section(doc, "failure", raw)
    _number(doc, ("failure", "max_failures"), failure["max_failures"], integer=True, minimum=-1)

    base = _mapping(doc, ("base_config",), raw.get("base_config"), {})
    _check_keys(doc, ("base_config",), base, {"path", "overrides"})
    base_path = base.get("path")
    if base_path is not None:
        if not isinstance(base_path, str):
            doc.fail(("base_config", "path"), f"expected a file path, got {base_path!r}")
        base_path = (path.parent / base_path).resolve()
        if not base_path.is_file():
            doc.fail(("base_config", "path"), f"no such file: {base_path}")
    overrides = _mapping(doc, ("base_config", "overrides"), base.get("overrides"), {})
    for key in overrides:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            doc.fail(("base_config", "overrides", str(key)), "expected a dotted training-config key")

    params = _params(doc, ("parameters",), raw.get("parameters"))
    strategies = _strategies(doc, raw)
    has_rank = any(p.key == RANK_KEY for p in params) or all(
        any(p.key == RANK_KEY for p in s.params) for s in strategies) or RANK_KEY in overrides
    ratio_used = any(p.key == ALPHA_RATIO_KEY for p in params) or any(
        p.key == ALPHA_RATIO_KEY for s in strategies for p in s.params)
    if ratio_used and not has_rank:
        doc.fail(("parameters",), f"{ALPHA_RATIO_KEY} needs {RANK_KEY} in the space or base_config")
    points = _points(doc, raw, params, strategies)

    space = SweepSpace(
        path=path, source_text=text, name=name, metric=metric, mode=mode,
        num_samples=budget["num_samples"], max_epochs=budget["max_epochs"],
        max_concurrent=budget["max_concurrent"], gpus_per_trial=resources["gpus_per_trial"],
        cpus_per_trial=resources["cpus_per_trial"], workers_per_trial=resources["workers_per_trial"],
        grace_period=asha["grace_period"], reduction_factor=asha["reduction_factor"],
        brackets=asha["brackets"], sampler=sampler, max_failures=failure["max_failures"],
        base_config_path=base_path, base_overrides=dict(overrides), params=tuple(params),
        strategies=tuple(strategies), points_to_evaluate=points, launcher=resources["launcher"],
    )
    if validate_config:
        _validate_against_config(doc, space)
    return space


def _validate_against_config(doc: _Doc, space: SweepSpace) -> None:
    """Build the training config of one corner of the space per strategy; map errors to lines."""
    from lora_train.config import load_config

    base = str(space.base_config_path) if space.base_config_path else None
    try:
        load_config(base, dict(space.base_overrides))
    except UserError as err:
        doc.fail(("base_config",), str(err))
    for strategy in space.strategies:
        overridden = {p.key for p in strategy.params}
        sections = [("parameters", p) for p in space.params if p.key not in overridden]
        sections += [("strategies", strategy.label, p) for p in strategy.params]
        for corner in ("low", "high"):
            config = {STRATEGY_KEY: strategy.label}
            for *prefix, p in sections:
                config[p.key] = _corner_value(p, corner)
            trial_config = {}
            for key, value in config.items():
                if any(key == p.key for p in strategy.params):
                    key = f"{CONDITIONAL_PREFIX}.{strategy.label}.{key}"
                _set_nested(trial_config, key, value)
            overrides = trial_overrides(trial_config, space)
            try:
                load_config(base, overrides)
            except UserError as err:
                culprit = next((s for s in sections if s[-1].key in str(err)), None)
                path = tuple(culprit[:-1]) + (culprit[-1].key,) if culprit else ("strategies", strategy.label)
                doc.fail(path, str(err))


def _corner_value(p: Param, corner: str):
    if p.kind == "fixed":
        return p.value
    if p.kind == "categorical":
        return p.choices[0] if corner == "low" else p.choices[-1]
    value = p.low if corner == "low" else p.high
    return int(value) if p.kind == "int" else float(value)


def _set_nested(d: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[leaf] = value
