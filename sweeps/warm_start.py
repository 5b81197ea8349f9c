"""Warm start: the finished trials of earlier sweeps seed this sweep's Optuna study.

`python sweeps/run.py --space FILE --warm-start OLD_SWEEP [...]` reads the trial runs of the
named MLflow experiments and maps each onto the current space:

- only search runs (not an earlier confirm phase's repeats) that ran to the end (`trial.status`
  completed) and were scored on this sweep's validation windows (`val.windows_hash`, the
  one-yardstick rule) count;
- the run's logged training config is resolved (`lora_train.config.load_config`, so values come
  typed and unset keys take their defaults), its strategy picks the branch of the conditional
  space, and every parameter searched in that branch must lie in the current range or choices
  (`lora.alpha_ratio` is read back as alpha / rank);
- the training config the current space gives that configuration must equal the run's resolved
  config key by key (apart from the trial's output folder): a different fixed value, base
  override or `train.epochs` (= `budget.max_epochs`) means another experiment, and the run is
  skipped.

Usable runs become COMPLETE trials of the study (`study.add_trial`) with their final objective
values and constraint values and the user attribute `warm_start_run_id`, before the first proposal
(on a fresh start only: a resumed sweep has them already). Their distributions are those the
current define-by-run space gives, replayed on `optuna.trial.FixedTrial`.

A proposal equal to one of them (the same Optuna parameters) is not trained again, unless
`--rerun-duplicates`: the searcher writes the earlier run's per-epoch metrics into the trial's
folder (`REUSE_FILE`) and the trial replays them to Tune and MLflow instead of training
(`ReuseOrTrain`), tagged `sweep.reused_run_id`, with the earlier run's final adapter as its last
epoch's checkpoint (a proposal whose earlier adapter cannot be downloaded is trained).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lora_train.errors import UserError
from sweeps.pareto import Criteria
from sweeps.space import (
    ALPHA_KEY,
    ALPHA_RATIO_KEY,
    RANK_KEY,
    STRATEGY_KEY,
    Param,
    SweepSpace,
    conditional_name,
    optuna_name,
    trial_overrides,
)
from sweeps.trial_reporter import TRAINABLE_PARAMS_METRIC
from tracking.layout import PHASE_TAG, ROLE_TAG, STATUS_TAG, WINDOWS_HASH_TAG
from vggt_common.files import atomic_write

REUSE_FILE = "reused_result.json"
WARM_START_ATTR = "warm_start_run_id"  # Optuna user attribute of a warm-start trial
REUSED_ATTR = "reused_run_id"  # Optuna user attribute of a proposal that reused an earlier run
WARM_START_TAG = "sweep.warm_start_trials"  # parent run: how many earlier trials seeded the study
REUSED_TAG = "sweep.reused_run_id"  # trial run: the earlier run whose result it replays
# Keys of a trial's config that name its own folder, not the configuration.
OUTPUT_KEYS = ("train.output_dir", "train.overwrite", "train.progress_bar")
# Per-epoch metrics a reused trial replays (with every criteria metric).
REPLAYED_PREFIXES = ("val/", "cost/", "time/wall_s", "adapter/")


@dataclass(frozen=True)
class EarlierTrial:
    """A finished trial of an earlier sweep, mapped onto the current space.

    Attributes:
        run_id, experiment: its MLflow run.
        params: Optuna parameters in the current space (`lora/strategy`, `optim/lr`,
            `by_strategy/C/optim/lr`, ...), typed as the space's `Param`s.
        metrics: final values of the run's metrics (`adapter/trainable_params` included).
    """

    run_id: str
    experiment: str
    params: dict
    metrics: dict


@dataclass
class WarmStart:
    """The usable earlier trials, the skipped runs by reason, and how to treat duplicates.

    Attributes:
        trial_setup: the sweep's `TrialSetup` (where a reusing trial's folder is).
    """

    trials: list[EarlierTrial]
    skipped: Counter = field(default_factory=Counter)
    tracking_uri: str | None = None
    rerun_duplicates: bool = False
    trial_setup: object = None

    def duplicate_of(self, params: dict) -> EarlierTrial | None:
        """The earlier trial with exactly these Optuna parameters, unless duplicates are rerun."""
        if self.rerun_duplicates:
            return None
        return next((t for t in self.trials if t.params == params), None)

    def reuse(self, trial_id: str, earlier: EarlierTrial, max_epochs: int) -> None:
        """Make trial `trial_id` replay `earlier` instead of training (raises if it cannot)."""
        from sweeps.trial_setup import trial_dir

        write_reuse(trial_dir(self.trial_setup, trial_id), earlier, self.tracking_uri, max_epochs)

    def describe(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return (f"warm start: {len(self.trials)} earlier trial(s) used, {skipped} skipped"
                + (f" ({reasons})" if reasons else ""))


def load_warm_start(tracking_uri: str, experiments, space: SweepSpace, trial_setup, windows_hash: str | None,
                    *, rerun_duplicates: bool = False) -> WarmStart:
    """Read the trial runs of `experiments` and keep those that map onto `space` (module doc).

    Args:
        trial_setup: the sweep's `TrialSetup`; its `fixed_overrides` are the training-config
            overrides every trial gets besides the space's (data root, checkpoint, protocol).
        windows_hash: this sweep's `val.windows_hash` (None when the data was not checked).
    """
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri)
    fixed_overrides = trial_setup.fixed_overrides
    warm = WarmStart([], Counter(), tracking_uri, rerun_duplicates, trial_setup)
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise UserError(f"--warm-start: no experiment {name!r} on {tracking_uri}")
        runs, token = [], None
        while True:
            page = client.search_runs([experiment.experiment_id], f"tags.`{ROLE_TAG}` = 'trial'",
                                      ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
        for run in runs:
            outcome = map_run(run.data.params, run.data.metrics, run.data.tags, space, fixed_overrides, windows_hash)
            if isinstance(outcome, str):
                warm.skipped[outcome] += 1
            else:
                warm.trials.append(EarlierTrial(run.info.run_id, name, *outcome))
    return warm


def map_run(params: dict, metrics: dict, tags: dict, space: SweepSpace, fixed_overrides: dict,
            windows_hash: str | None) -> tuple[dict, dict] | str:
    """(Optuna parameters, final metrics) of an earlier trial run in `space`, or why it is skipped.

    Args:
        params, metrics, tags: the run's MLflow params (strings), latest metric values and tags.
    """
    if tags.get(PHASE_TAG, "search") != "search":
        return "a confirm-phase repeat (another seed)"
    if tags.get(STATUS_TAG) != "completed":
        return "unfinished"
    if tags.get(WINDOWS_HASH_TAG) != windows_hash:
        return "scored on other validation windows"
    metrics = dict(metrics)
    if TRAINABLE_PARAMS_METRIC not in metrics and "lora.trainable_params" in params:  # runs before the metric
        metrics[TRAINABLE_PARAMS_METRIC] = float(params["lora.trainable_params"])
    if not all(math.isfinite(metrics.get(m, math.nan)) for m in space.criteria.metrics):
        return "missing an objective or constraint metric"
    earlier = _resolved(space, _logged_overrides(space, params))
    if earlier is None:
        return "not a configuration of this training code"
    reason = "strategy outside the space"
    for strategy in space.strategies:
        if strategy.train_strategy != earlier[STRATEGY_KEY]:
            continue
        mapped = _map_branch(space, strategy.label, earlier)
        if mapped is None:
            reason = "outside the space's ranges or choices"
            continue
        current = _resolved(space, {**trial_overrides(_ray_config(space, mapped), space), **fixed_overrides})
        if current is None or any(not _same(earlier.get(k), current.get(k)) for k in set(earlier) | set(current)
                                  if k not in OUTPUT_KEYS):
            reason = "a different fixed value"
            continue
        return mapped, metrics
    return reason


def _map_branch(space: SweepSpace, label: str, earlier: dict) -> dict | None:
    """The Optuna parameters of strategy `label`'s branch, read from a resolved config; None if a
    value lies outside its range or choices."""
    strategy = space.strategy(label)
    overridden = {p.key for p in strategy.params}
    branch = [(optuna_name(p.key), p) for p in space.params if p.key not in overridden]
    branch += [(conditional_name(label, p.key), p) for p in strategy.params]
    params = {optuna_name(STRATEGY_KEY): label}
    for name, param in branch:
        if param.kind == "fixed":  # compared with the whole config afterwards
            continue
        if param.key == ALPHA_RATIO_KEY:
            alpha, rank = earlier.get(ALPHA_KEY), earlier.get(RANK_KEY)
            value = alpha / rank if isinstance(alpha, (int, float)) and rank else None
        else:
            value = earlier.get(param.key)
        value = _typed(param, value)
        if value is None or not param.contains(value):
            return None
        params[name] = value
    return params


def _typed(param: Param, value):
    """`value` as the space's parameter holds it (an int range gets an int, a categorical its own
    choice object), or None when it has no such form."""
    if value is None or isinstance(value, bool) and param.kind in ("int", "float"):
        return None
    if param.kind == "int":
        return int(value) if isinstance(value, (int, float)) and float(value).is_integer() else None
    if param.kind == "float":
        return float(value) if isinstance(value, (int, float)) else None
    return next((c for c in param.choices if isinstance(c, bool) == isinstance(value, bool) and c == value), None)


def _ray_config(space: SweepSpace, params: dict) -> dict:
    """The nested trial config Ray builds from these Optuna parameters (and the space's constants)."""
    import optuna
    from ray.tune.utils.util import unflatten_dict

    constants = space.define_by_run()(optuna.trial.FixedTrial(params))
    return unflatten_dict({**params, **constants})


def _logged_overrides(space: SweepSpace, params: dict) -> dict:
    """A trial run's training-config overrides back from its MLflow params.

    Params are the strings `tracking.params.flatten_params` made: None became "None" and a list of
    scalars "a,b"; other strings are YAML scalars, which `load_config` parses itself. Params that
    are no training-config key (`lora.trainable_params`, `val.*`) are left out.
    """
    from lora_train.config import TrainConfig

    defaults = _resolved(space, {}) or {}
    sections = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for key, text in params.items():
        if key in OUTPUT_KEYS or key == "lora.trainable_params" or key.split(".")[0] not in sections:
            continue
        if text == "None":
            out[key] = None
        elif isinstance(defaults.get(key), (list, tuple)):
            out[key] = json.loads(text) if text.startswith("[") else [yaml.safe_load(x) for x in text.split(",") if x]
        else:
            out[key] = text
    return out


def _resolved(space: SweepSpace, overrides: dict) -> dict | None:
    """The flat training config these overrides give on the space's base config; None if invalid."""
    from lora_train.config import load_config

    base = str(space.base_config_path) if space.base_config_path else None
    try:
        return _flatten(load_config(base, overrides).to_dict())
    except (UserError, ValueError, TypeError):
        return None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


def add_to_study(study, space: SweepSpace, trials: list[EarlierTrial]) -> int:
    """Add `trials` to the Optuna study as COMPLETE trials (objective and constraint values, user
    attribute `warm_start_run_id`); returns how many were added."""
    import optuna

    criteria: Criteria = space.criteria
    search = space.define_by_run()
    for trial in trials:
        fixed = optuna.trial.FixedTrial(trial.params)
        search(fixed)
        study.add_trial(optuna.trial.create_trial(
            params=trial.params, distributions=fixed.distributions,
            values=[trial.metrics[o.metric] for o in criteria.objectives],
            user_attrs={WARM_START_ATTR: trial.run_id, "warm_start_experiment": trial.experiment},
            constraints=criteria.excesses(trial.metrics) or None,
        ))
    return len(trials)


def write_reuse(trial_dir: Path, earlier: EarlierTrial, tracking_uri: str, max_epochs: int) -> None:
    """Leave the earlier run's per-epoch metrics and final adapter in a trial's folder for
    `ReuseOrTrain` to replay (raises when the run's `adapter/` artifact cannot be downloaded).

    Per-epoch metrics are logged at step = epoch; a metric logged once (the adapter size) or not
    every epoch carries its last value forward. The adapter is the run's last epoch's.
    """
    import mlflow.artifacts
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    adapter = mlflow.artifacts.download_artifacts(run_id=earlier.run_id, artifact_path="adapter",
                                                  dst_path=str(Path(trial_dir) / "reused"), tracking_uri=tracking_uri)
    names = [m for m in earlier.metrics if m.startswith(REPLAYED_PREFIXES)]
    by_epoch: dict[int, dict] = {}
    for name in names:
        for point in client.get_metric_history(earlier.run_id, name):
            by_epoch.setdefault(int(point.step), {})[name] = point.value
    epochs, last = [], {}
    for epoch in range(1, max_epochs + 1):
        last = {**last, **by_epoch.get(epoch, {})}
        epochs.append({name: last.get(name, earlier.metrics[name]) for name in names})
    tags = client.get_run(earlier.run_id).data.tags
    record = {"run_id": earlier.run_id, "experiment": earlier.experiment, "windows_hash": tags.get(WINDOWS_HASH_TAG),
              "epochs": epochs, "adapter": adapter}
    atomic_write(Path(trial_dir) / REUSE_FILE, json.dumps(record))


class ReuseOrTrain:
    """The trials' training function: replays an earlier run's epochs when the searcher left a
    `REUSE_FILE` in the trial's folder, else trains with `train_fn` (None: lora_train's
    `run_training`). Picklable: it travels to the trials inside `TrialSetup`."""

    def __init__(self, train_fn=None):
        self.train_fn = train_fn

    def __call__(self, config, reporter, *, resume_from=None):
        reuse = Path(config.train.output_dir) / REUSE_FILE
        if reuse.is_file():
            return replay(json.loads(reuse.read_text()), reporter, config)
        train_fn = self.train_fn
        if train_fn is None:
            from lora_train.train import run_training as train_fn
        return train_fn(config, reporter, resume_from=resume_from)


def replay(record: dict, reporter, config) -> None:
    """Report an earlier run's epochs as this trial's, then its completion. The last epoch's
    checkpoint is the earlier run's adapter with a trainer state holding this trial's resolved
    config (the earlier run's, by the warm-start mapping) and no optimizer state: enough to
    register or evaluate it, not to resume its training."""
    import torch

    from lora_train.checkpointing import TRAINER_STATE

    last = len(record["epochs"])
    torch.save({"config": config.to_dict(), "epoch": last, "reused_run_id": record["run_id"]},
               Path(record["adapter"]) / TRAINER_STATE)
    logger = getattr(reporter, "logger", None)  # rank 0's TrialReporter logs to the trial's run
    if logger is not None:
        logger.set_tags({REUSED_TAG: record["run_id"],
                         **({WINDOWS_HASH_TAG: record["windows_hash"]} if record.get("windows_hash") else {})})
    for epoch, metrics in enumerate(record["epochs"], 1):
        reporter.on_epoch(epoch, {**metrics, "epoch": epoch}, record["adapter"] if epoch == last else None)
    reporter.on_end("completed")
