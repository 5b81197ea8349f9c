"""Reading a space file: YAML with line numbers → a validated `SweepSpace`.

Everything is validated before anything starts: a mistake raises `UserError` with one line naming
the file, the line and the key (`space.yaml:7: parameters.lora.rank: empty range: low 8 > high 4`).
The file format is documented in `sweeps/strategies.yaml`.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from lora_train.config import BUILTIN_STRATEGIES
from lora_train.errors import UserError
from sweeps.pareto import MODES, SCALES, ChampionRule, Constraint, Objective, default_scale, metric_problem
from sweeps.space import (
    ALPHA_KEY,
    AUTO,
    ALPHA_RATIO_KEY,
    CONDITIONAL_PREFIX,
    CUSTOM_TARGET_KEYS,
    DATA_IDENTITY_KEYS,
    LAUNCHERS,
    NAME_RE,
    NAME_RULE,
    PROTOCOL_KEYS,
    RANK_KEY,
    SELECTION_DEFAULTS,
    STRATEGY_KEY,
    Param,
    Strategy,
    SweepSpace,
    conditional_name,
    cross_problems,
    field_problem,
    number_problem,
    optuna_name,
    trial_overrides,
)
from sweeps.study_storage import url_problem as storage_url_problem

_TOP_KEYS = {
    "name", "metric", "mode", "budget", "resources", "asha", "sampler", "failure",
    "base_config", "parameters", "strategies", "points_to_evaluate", "validation",
    "objectives", "constraints", "champion", "selection",
}
_VALIDATION_KEYS = {"num_views", "width", "max_windows", "seed", "scenes", "camera_metrics"}
_SECTION_DEFAULTS = {
    "budget": {"num_samples": 8, "max_epochs": 4, "max_concurrent": 0},
    "resources": {"gpus_per_trial": 0, "cpus_per_trial": 1, "workers_per_trial": 1, "launcher": "auto",
                  "gpu_memory_gib": None},  # gpus_per_trial may be "auto" (sweeps/packing.py)
    "asha": {"grace_period": 1, "reduction_factor": 2, "brackets": 1},
    "sampler": {"type": "tpe", "multivariate": True, "group": True, "seed": 0, "n_startup_trials": 4,
                "storage": None},  # None: optuna.db in the sweep folder (sweeps/study_storage.py)
    "failure": {"max_failures": 1},
    "selection": SELECTION_DEFAULTS,
}
_SPEC_KEYS = {
    "int": {"type", "low", "high", "log", "step"},
    "float": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
    "fixed": {"type", "value"},
}
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
# Where each SweepSpace field lives in the file (for errors about rules between fields).
_FIELD_PATHS = {
    "num_samples": ("budget", "num_samples"), "max_epochs": ("budget", "max_epochs"),
    "max_concurrent": ("budget", "max_concurrent"), "gpus_per_trial": ("resources", "gpus_per_trial"),
    "cpus_per_trial": ("resources", "cpus_per_trial"), "workers_per_trial": ("resources", "workers_per_trial"),
    "launcher": ("resources", "launcher"), "grace_period": ("asha", "grace_period"),
    "reduction_factor": ("asha", "reduction_factor"), "brackets": ("asha", "brackets"),
    "max_failures": ("failure", "max_failures"),
}



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


def _number(doc, path, value, **rule):
    problem = number_problem(value, **rule)
    if problem:
        doc.fail(path, problem)
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
        if key in PROTOCOL_KEYS:
            doc.fail(path + (key,), "every trial is scored with one validation protocol: set it in the "
                     "'validation' section, not per trial")
        if key in DATA_IDENTITY_KEYS:
            doc.fail(path + (key,), "every trial starts from the same data and base model: set it in "
                     "base_config.overrides, not per trial")
        params.append(_param(doc, path + (str(key),), key, spec))
    keys = {p.key for p in params}
    if ALPHA_RATIO_KEY in keys and ALPHA_KEY in keys:
        doc.fail(path + (ALPHA_RATIO_KEY,), f"set either {ALPHA_KEY} or {ALPHA_RATIO_KEY}, not both")
    return params


def _validation(doc, raw) -> dict:
    """The `validation:` section: the protocol's explicit keys (the rest come from the base config)."""
    section = _mapping(doc, ("validation",), raw.get("validation"), {})
    _check_keys(doc, ("validation",), section, _VALIDATION_KEYS)
    rules = {"num_views": dict(minimum=1), "width": dict(minimum=14), "max_windows": dict(minimum=1),
             "seed": dict(minimum=0)}
    for key, rule in rules.items():
        if section.get(key) is not None:
            _number(doc, ("validation", key), section[key], integer=True, **rule)
    if section.get("width") is not None and section["width"] % 14:
        doc.fail(("validation", "width"), f"must be a multiple of 14 (the patch size), got {section['width']}")
    scenes = section.get("scenes")
    if scenes is not None and (not isinstance(scenes, list) or not scenes
                               or not all(isinstance(x, str) and x for x in scenes)):
        doc.fail(("validation", "scenes"), f"expected a list of scene names or null, got {scenes!r}")
    if not isinstance(section.get("camera_metrics", True), bool):
        doc.fail(("validation", "camera_metrics"), f"expected true or false, got {section['camera_metrics']!r}")
    if section.get("camera_metrics", True) and section.get("num_views", 2) < 2:
        doc.fail(("validation", "num_views"), "one view has no camera metrics; set validation.camera_metrics: "
                 "false to score depth alone")
    return dict(section)


def _selection(doc, raw) -> dict:
    """The `selection:` section: confirm phase and champion rule (`SELECTION_DEFAULTS`)."""
    section = _section(doc, "selection", raw)
    for key in ("top_k", "seeds", "cv_folds"):
        _number(doc, ("selection", key), section[key], integer=True, minimum=0)
    if section["cv_folds"] == 1:
        doc.fail(("selection", "cv_folds"), "one fold holds no scene out: use 0 (off) or at least 2")
    _number(doc, ("selection", "retention_margin"), section["retention_margin"], minimum=0)
    return section


def _check_num_views(doc, params_by_path: list[tuple[tuple, Param]], camera_metrics: bool) -> None:
    """With camera metrics wanted, no trial may train on fewer than 2 views."""
    for path, param in params_by_path:
        if param.key != "data.num_views" or not camera_metrics:
            continue
        values = [param.value] if param.kind == "fixed" else list(param.choices) if param.kind == "categorical" \
            else [param.low]
        if any(isinstance(v, (int, float)) and v < 2 for v in values):
            doc.fail(path, "trials with fewer than 2 views have no camera metrics; set validation.camera_metrics: "
                     "false to allow them")


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
        if not NAME_RE.match(label) or "/" in label:
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
    if not isinstance(name, str) or not NAME_RE.match(name):
        doc.fail(("name",), f"expected a name of {NAME_RULE}, got {name!r}")
    metric = raw.get("metric", "val/abs_rel")
    if not isinstance(metric, str) or not metric:
        doc.fail(("metric",), f"expected a metric name like val/abs_rel, got {metric!r}")
    mode = raw.get("mode", "min")
    if mode not in ("min", "max"):
        doc.fail(("mode",), f"expected min or max, got {mode!r}")

    budget, resources, asha = (_section(doc, s, raw) for s in ("budget", "resources", "asha"))
    pack_gpus = resources["gpus_per_trial"] == AUTO  # packed by predicted memory, at most one GPU each
    if pack_gpus:
        resources["gpus_per_trial"] = 1.0
    if resources["gpu_memory_gib"] is not None:
        _number(doc, ("resources", "gpu_memory_gib"), resources["gpu_memory_gib"], minimum=0, exclusive=True)
    failure = _section(doc, "failure", raw)
    values = {**budget, **resources, **asha, **failure}
    for field, where in _FIELD_PATHS.items():
        problem = field_problem(field, values[field]) if field != "launcher" else None
        if problem:
            doc.fail(where, problem)
    if resources["launcher"] not in LAUNCHERS:
        doc.fail(("resources", "launcher"), f"expected one of {', '.join(LAUNCHERS)}, got {resources['launcher']!r}")
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
    if sampler["storage"] is not None and (problem := storage_url_problem(sampler["storage"])):
        doc.fail(("sampler", "storage"), problem)

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
    validation = _validation(doc, raw)
    selection = _selection(doc, raw)
    _check_num_views(doc, [(("parameters", p.key), p) for p in params]
                     + [(("strategies", s.label, p.key), p) for s in strategies for p in s.params],
                     validation.get("camera_metrics", True))

    objectives, constraints, champion = _criteria(doc, raw, on_gpu=resources["gpus_per_trial"] > 0)
    if objectives:
        metric, mode = objectives[0].metric, objectives[0].mode
    space = SweepSpace(
        path=path, source_text=text, name=name, metric=metric, mode=mode,
        num_samples=budget["num_samples"], max_epochs=budget["max_epochs"],
        max_concurrent=budget["max_concurrent"], gpus_per_trial=resources["gpus_per_trial"],
        cpus_per_trial=resources["cpus_per_trial"], workers_per_trial=resources["workers_per_trial"],
        grace_period=asha["grace_period"], reduction_factor=asha["reduction_factor"],
        brackets=asha["brackets"], sampler=sampler, max_failures=failure["max_failures"],
        base_config_path=base_path, base_overrides=dict(overrides), params=tuple(params),
        strategies=tuple(strategies), points_to_evaluate=points, launcher=resources["launcher"],
        validation=validation, selection=selection, objectives=objectives, constraints=constraints, champion=champion,
        pack_gpus=pack_gpus, gpu_memory_gib=resources["gpu_memory_gib"],
    )
    for fields, message in cross_problems(space):
        doc.fail(_FIELD_PATHS[fields[0]], message)
    if validate_config:
        _validate_against_config(doc, space)
    return space


def _criteria(doc, raw, *, on_gpu: bool) -> tuple[tuple, tuple, ChampionRule | None]:
    """`objectives:` (or the one objective `metric`/`mode`), `constraints:` and `champion:`; every
    metric they name must be one a trial of this sweep reports (`sweeps.pareto.TRIAL_METRICS`)."""
    def metric_at(path, name, final_ok=True):
        problem = metric_problem(name, on_gpu=on_gpu, final_ok=final_ok)
        if problem:
            doc.fail(path, problem)
        return name

    objectives = []
    if "objectives" not in raw:
        metric_at(("metric",), raw.get("metric", "val/abs_rel"), final_ok=False)
    elif "metric" in raw or "mode" in raw:
        doc.fail(("objectives",), "give either objectives or metric/mode, not both")
    else:
        items = raw["objectives"]
        if not isinstance(items, list) or not items:
            doc.fail(("objectives",), "expected a list of {metric: NAME, mode: min|max} mappings")
        for i, item in enumerate(items):
            path = ("objectives", i)
            item = _mapping(doc, path, item)
            _check_keys(doc, path, item, {"metric", "mode", "scale"})
            if "metric" not in item:
                doc.fail(path, "missing 'metric'")
            metric = metric_at(path + ("metric",), item["metric"], final_ok=False)
            if metric in (o.metric for o in objectives):
                doc.fail(path + ("metric",), f"{metric} is already an objective")
            mode, scale = item.get("mode", "min"), item.get("scale", default_scale(metric))
            if mode not in MODES:
                doc.fail(path + ("mode",), f"expected min or max, got {mode!r}")
            if scale not in SCALES:
                doc.fail(path + ("scale",), f"expected linear or log, got {scale!r}")
            objectives.append(Objective(metric, mode, scale))
    constraints = _constraints(doc, ("constraints",), raw.get("constraints"), metric_at)

    champion = None
    if raw.get("champion") is not None:
        section = _mapping(doc, ("champion",), raw["champion"])
        _check_keys(doc, ("champion",), section, {"metric", "mode", "subject_to"})
        if "metric" not in section:
            doc.fail(("champion",), "missing 'metric' (the metric the champion is the best of)")
        metric = metric_at(("champion", "metric"), section["metric"])
        objective_modes = {o.metric: o.mode for o in objectives} or {raw.get("metric", "val/abs_rel"): raw.get("mode", "min")}
        mode = section.get("mode", objective_modes.get(metric))
        if mode is None:
            doc.fail(("champion",), f"missing 'mode': {metric} is not an objective")
        if mode not in MODES:
            doc.fail(("champion", "mode"), f"expected min or max, got {mode!r}")
        champion = ChampionRule(metric, mode, _constraints(doc, ("champion", "subject_to"),
                                                           section.get("subject_to"), metric_at))
    return tuple(objectives), constraints, champion


def _constraints(doc, path, items, metric_at) -> tuple[Constraint, ...]:
    """A list of `METRIC <= BOUND` / `METRIC >= BOUND` strings."""
    if items is None:
        return ()
    if not isinstance(items, list):
        doc.fail(path, "expected a list of constraints like 'cost/peak_gpu_gib <= 24'")
    out = []
    for i, text in enumerate(items):
        try:
            constraint = Constraint.parse(text)
        except ValueError as err:
            doc.fail(path + (i,), str(err))
        metric_at(path + (i,), constraint.metric)
        out.append(constraint)
    return tuple(out)


def _validate_against_config(doc: _Doc, space: SweepSpace) -> None:
    """Check every value the space can give a trial against the training config's rules.

    Choices and fixed values are each built into a trial config. A range is checked at both ends,
    which covers every value in it for interval rules (minimum, maximum); the one other kind of
    rule, "a multiple of m" (`lora_train.config.MULTIPLE_OF`), is checked on the range's start and
    step. Each value is tried with the other parameters at their lowest values.
    """
    from lora_train.config import MULTIPLE_OF, load_config

    base = str(space.base_config_path) if space.base_config_path else None
    try:
        load_config(base, dict(space.base_overrides))
    except UserError as err:
        doc.fail(("base_config",), str(err))
    protocol = space.protocol_overrides()
    if space.validation.get("camera_metrics", True) and protocol["eval.num_views"] < 2:
        doc.fail(("validation",), f"the base config validates on {protocol['eval.num_views']} view(s), which has no "
                 "camera metrics; set validation.num_views >= 2 or validation.camera_metrics: false")
    for strategy in space.strategies:
        overridden = {p.key for p in strategy.params}
        sections = [(("parameters", p.key), p) for p in space.params if p.key not in overridden]
        sections += [(("strategies", strategy.label, p.key), p) for p in strategy.params]
        lowest = {p.key: _corner_value(p, "low") for _, p in sections}
        for path, param in sections:
            multiple = MULTIPLE_OF.get(param.key)
            if multiple and param.kind in ("int", "float"):
                step = param.step or 1
                if param.kind == "float" or param.low % multiple or (param.high > param.low and step % multiple):
                    doc.fail(path, f"every value must be a multiple of {multiple}, but {param.describe()} "
                             f"(step {step}) also gives others; use an int range with low and step multiples of "
                             f"{multiple}, or choices")
            for value in _values_to_check(param):
                values = {**lowest, param.key: value}
                try:
                    load_config(base, trial_overrides(_trial_config(strategy, values), space))
                except UserError as err:  # name the parameter the error is about (another's low end?)
                    culprit_path, culprit = next(((q, p) for q, p in sections if p.key in str(err)), (path, param))
                    doc.fail(culprit_path, f"{values[culprit.key]!r}: {err}")


def _values_to_check(p: Param) -> list:
    if p.kind == "fixed":
        return [p.value]
    if p.kind == "categorical":
        return list(p.choices)
    return [_corner_value(p, "low"), _corner_value(p, "high")]


def _trial_config(strategy: Strategy, values: dict) -> dict:
    """The nested Ray trial config that `trial_overrides` maps back to these dotted values."""
    config = {}
    _set_nested(config, STRATEGY_KEY, strategy.label)
    conditional = {p.key for p in strategy.params}
    for key, value in values.items():
        _set_nested(config, f"{CONDITIONAL_PREFIX}.{strategy.label}.{key}" if key in conditional else key, value)
    return config


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
