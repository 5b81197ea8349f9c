"""The names of the run layout that every part and the MLflow UI rely on (no MLflow import, so
trial processes can use them cheaply).

    experiment  <sweep name>
    └─ parent run  (tag sweep.role=parent, sweep.name)   params space.<dotted>, val.*, artifact space.yaml,
       │                                                 validation.json, tags best.run_id and
       │                                                 val.windows_hash, champion.* (the decision:
       │                                                 sweeps.selection.PromotionDecision.tags),
       │                                                 metrics best/*, leaderboard/*
       └─ child run per trial (sweep.role=trial, mlflow.parentRunId, ray.trial_id,
            sweep.phase=search, or confirm with confirm.of=<search trial id>, confirm.seed, confirm.fold)
            params lora.*, optim.*, ..., lora.trainable_params, val.num_views, val.width, val.num_windows
            metrics train/*, val/*, best/val_abs_rel, cost/*, time/step_s, eval/* and retention/* (final
                    evaluation), confirm/* (a confirmed search trial: its configuration over its confirm runs)
            tags trial.status ∈ completed|early_stopped|failed|diverged|interrupted, trial.stop_reason,
                 val.windows_hash
            artifacts adapter/, eval/metrics.json, eval/visualizations/*.png, config.yaml, validation.json

Every comparison between runs (leaderboard, champion, warm start) is made only between runs whose
`val.windows_hash` is equal: they were scored on the same validation windows.
"""

ROLE_TAG = "sweep.role"
SWEEP_TAG = "sweep.name"
TRIAL_ID_TAG = "ray.trial_id"
PARENT_TAG = "mlflow.parentRunId"
STATUS_TAG = "trial.status"
REASON_TAG = "trial.stop_reason"
BEST_RUN_TAG = "best.run_id"
SWEEP_STATUS_TAG = "sweep.status"  # on the parent: "interrupted" while a sweep waits for --resume
WINDOWS_HASH_TAG = "val.windows_hash"
PHASE_TAG = "sweep.phase"  # on a trial run: "search" (Optuna + ASHA) or "confirm" (sweeps/confirm.py)
CONFIRM_OF_TAG = "confirm.of"  # a confirm run: the search trial whose configuration it trains again
CONFIRM_SEED_TAG = "confirm.seed"  # its train.seed
CONFIRM_FOLD_TAG = "confirm.fold"  # its validation fold (cv_folds), absent without folds
CONFIRM_METRIC_PREFIX = "confirm/"  # on a confirmed search trial's run: its configuration's pooled result
CHAMPION_ALIAS = "champion"
# The experiment's kind for the UI ("Model training", not GenAI). The UI prefers the `workflowType`
# of the address (or the browser's stored choice), so the links we print carry it too (tracking/ui.py).
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")


def validation_params(record: dict) -> dict[str, object]:
    """Run params of a validation record (`ETH3DWindows.describe()`, optionally with `protocol`)."""
    params = {"val.num_views": record["num_views"], "val.width": record["width"],
              "val.num_windows": record["num_windows"]}
    params.update({f"val.{k}": v for k, v in record.get("protocol", {}).items()
                   if k in ("max_windows", "seed", "scenes")})
    return params
