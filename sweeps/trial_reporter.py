"""Rank 0's reporter inside a trial: epochs to Tune (via the trial's Tune function), everything to
MLflow (batched, spooled while the server is unreachable)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

from lora_train.reporting import Reporter
from sweeps.trial_setup import END_KEY, SPOOL_FILE
from tracking.layout import WINDOWS_HASH_TAG, validation_params

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
NODE_IP_TAG = "ray.node_ip"  # the Ray node (host) the trial trains on; a retry elsewhere updates it
# lora_train's names → MLflow's, so that no metric is logged on both step axes.
STEP_RENAMES = {"epoch": "train/epoch_fraction"}
EPOCH_RENAMES = {"train/loss": "train/epoch_loss"}
TRAINABLE_PARAMS_METRIC = "adapter/trainable_params"  # with every Tune result; to MLflow once


class TrialStopped(Exception):
    """Raised in rank 0's reporter when the trial driver is gone, to end orphaned training."""


class TrialReporter(Reporter):
    """Rank 0's reporter: epochs → the trial driver (→ Tune, ASHA); steps/epochs/files → MLflow.

    MLflow gets every step's metrics, every epoch's validation metrics and adapter
    (`adapter/`), the resolved `config.yaml`, and `eval/metrics.json` + `eval/visualizations/*.png`
    of the best epoch. Tracking problems never fail the trial (the logger spools and replays).

    `results` takes the epoch results: a `ReportChannel` (Ray Train worker → trial driver) or
    `TuneResults` (in-trial run). After the last epoch (`final_epoch`) and before its result goes
    out, the best adapter is compared with the frozen base: Tune ends a trial as soon as it
    reports its last epoch, so nothing may come after that report. The comparison (and with it the
    last result) waits for `on_end`, when the training has freed its model: a trial never holds
    two models at once (`lora_train.train.release_memory`).

    Two step axes in MLflow: per-step metrics (`train/*`, `time/step_s`) at step = optimizer step;
    per-epoch metrics (`val/*`, `train/epoch_loss`, `cost/*`, `time/wall_s`) at step = epoch, and
    `adapter/trainable_params` once, at the first checkpoint's epoch (Tune gets it every epoch). A
    retried or restored trial (`resumed`: the checkpoint's trainer state, if any) logs only steps and
    epochs beyond those the run already holds, so every (metric, step) is logged once.
    """

    def __init__(self, results, tracking_uri, run_id, output_dir: Path, metric: str, mode: str,
                 final_epoch: int | None = None, base_cache: str | None = None, resumed: dict | None = None,
                 report_metrics: tuple[str, ...] = (), tags: dict | None = None):
        self.results = results
        self.final_report: dict | None = None  # the last epoch's result, sent by on_end
        self.report_metrics = tuple(report_metrics)  # in every Tune result (NaN if missing): the criteria
        self.trainable_params: int | None = None  # counted in the first checkpoint
        self.stopped = False
        self.metric, self.mode = metric, mode
        self.final_epoch = final_epoch
        self.base_cache = base_cache
        best = (resumed or {}).get("best_metrics") or {}
        self.best_value, self.best_epoch = best.get(metric), best.get("epoch")  # carried over a resume
        self.logged_params = False
        self.output_dir = Path(output_dir)
        self.logger = None
        self.logged = {}  # metric → highest step the run already holds (a retried or restored trial)
        if run_id is not None:
            from ray.util import get_node_ip_address

            from tracking.logger import MetricLogger

            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.logger = MetricLogger(
                tracking_uri, run_id, spool_path=str(self.output_dir / SPOOL_FILE),
                best={metric: mode, "val/abs_rel": "min"},
            )
            self.logger.set_tags({NODE_IP_TAG: get_node_ip_address(), **(tags or {})})  # this attempt's host
            # The run may hold steps already: resumed from a checkpoint, or restarted from scratch
            # after an attempt whose results Tune never recorded (its driver was stopped).
            self.logged = self.logger.latest_steps() or {}

    def _check_driver(self) -> None:
        if self.results.driver_gone():  # the trial was stopped (ASHA) or its driver died
            self.stopped = True
            raise TrialStopped("the trial's driver is gone (stopped by the scheduler); stopping training")

    def on_step(self, step: int, metrics: dict) -> None:
        self._check_driver()
        if self.logger:
            metrics = {STEP_RENAMES.get(k, k): v for k, v in _numeric(metrics).items()}
            self._log_new(metrics, step)

    def on_epoch(self, epoch: int, metrics: dict, checkpoint_dir: str | None) -> None:
        self._check_driver()
        metrics = _numeric(metrics)
        if "cost/gpu_seconds" in metrics and "cost/peak_mem_mb" in metrics:
            metrics["cost/peak_gpu_gib"] = metrics["cost/peak_mem_mb"] / 1024
        if self.trainable_params is None and checkpoint_dir:
            self.trainable_params = adapter_param_count(checkpoint_dir)
        value = metrics.get(self.metric)
        improved = value is not None and value == value and checkpoint_dir is not None and self._is_better(value)
        if improved:
            self.best_value, self.best_epoch = value, epoch
        if self.logger:
            self._log_epoch(epoch, metrics, checkpoint_dir, improved)
        report = {**metrics, "epoch": epoch}
        if self.trainable_params is not None:
            report.setdefault(TRAINABLE_PARAMS_METRIC, float(self.trainable_params))
        if checkpoint_dir:
            report["checkpoint_dir"] = checkpoint_dir
        if epoch == self.final_epoch:  # goes out in on_end, with the final evaluation's metrics
            self.final_report = report
        else:
            self._put(report)

    def _put(self, report: dict) -> None:
        for name in (self.metric, *self.report_metrics):  # Tune needs them in every result; NaN makes
            report.setdefault(name, float("nan"))  # ASHA stop a broken trial
        self.results.put(report)

    def _put_final(self) -> None:
        """The last epoch's result, after comparing the best adapter with the base (`compare_with_base`)."""
        if self.final_report is not None and not self.stopped:
            report, self.final_report = self.final_report, None
            self._put({**report, **self.compare_with_base()})

    def _log_new(self, metrics: dict, step: int) -> None:
        self.logger.log_metrics({k: v for k, v in metrics.items() if step > self.logged.get(k, -1)}, step=step)

    def _log_epoch(self, epoch, metrics, checkpoint_dir, improved: bool):
        self._log_new({EPOCH_RENAMES.get(k, k): v for k, v in metrics.items() if k not in ("step", "epoch")}, epoch)
        if not self.logged_params and checkpoint_dir:
            self.logger.log_params({"lora.trainable_params": self.trainable_params})
            self._log_new({TRAINABLE_PARAMS_METRIC: float(self.trainable_params)}, epoch)
            if (self.output_dir / "config.yaml").is_file():  # a stand-in trainer writes none
                self.logger.log_artifact(self.output_dir / "config.yaml")
            self._log_validation()
            self.logged_params = True
        if checkpoint_dir:
            with tempfile.TemporaryDirectory() as tmp:
                for name in ADAPTER_FILES:
                    if (Path(checkpoint_dir) / name).is_file():
                        shutil.copy2(Path(checkpoint_dir) / name, Path(tmp) / name)
                self.logger.log_artifacts(tmp, "adapter")
        if improved:
            self._log_eval(epoch, metrics, checkpoint_dir)
        self.logger.flush()

    def _log_validation(self) -> None:
        """The windows this trial is scored on (`lora_train.evaluate.write_validation_record`)."""
        from lora_train.evaluate import VALIDATION_FILE

        path = self.output_dir / VALIDATION_FILE
        if not path.is_file():  # a stand-in trainer writes none
            return
        record = json.loads(path.read_text())
        self.logger.log_params(validation_params(record))
        self.logger.set_tags({WINDOWS_HASH_TAG: record["windows_hash"]})
        self.logger.log_artifact(path)

    def _is_better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def _log_eval(self, epoch, metrics, checkpoint_dir):
        """`eval/metrics.json` and `eval/visualizations/*.png` of the best epoch so far."""
        with tempfile.TemporaryDirectory() as tmp:
            eval_dir = Path(tmp)
            record = {"epoch": epoch, "checkpoint": str(checkpoint_dir),
                      "metrics": {k: v for k, v in metrics.items() if k.startswith("val/")}}
            (eval_dir / "metrics.json").write_text(json.dumps(record, indent=2, sort_keys=True))
            for png_dir in (Path(checkpoint_dir) / "visualizations", self.output_dir / "visualizations"):
                if png_dir.is_dir():
                    shutil.copytree(png_dir, eval_dir / "visualizations", dirs_exist_ok=True)
                    break
            self.logger.log_artifacts(str(eval_dir), "eval")

    def on_end(self, status: str, reason: str = "") -> None:
        if self.stopped:  # the driver side has closed the run already
            return
        self._put_final()
        if self.logger:
            self.logger.set_tags({"trial.train_status": status, **({"trial.stop_reason": reason}
                                                                   if status != "completed" else {})})
            self.logger.flush()
        self.results.put({END_KEY: status, "reason": reason})

    def compare_with_base(self) -> dict[str, float]:
        """After the last epoch: evaluate the best adapter against the frozen base (with PNGs).

        Writes `<output_dir>/eval/metrics.json` (base and adapter, per window too) +
        `visualizations/*.png` and logs them as the run's `eval/` artifacts, plus the metrics of
        `final_eval_metrics` (non-finite interval bounds left out), which it returns ({} when there
        is no evaluation).
        """
        from lora_train.checkpointing import epoch_checkpoint, load_run_config
        from lora_train.evaluate import evaluate_checkpoint

        if not self.best_epoch:
            return {}
        checkpoint = epoch_checkpoint(self.output_dir / "checkpoints", int(self.best_epoch))
        if not (checkpoint / "adapter_config.json").is_file():
            return {}
        eval_dir = self.output_dir / "eval"
        try:  # the trial's result stands even if this extra evaluation fails
            report = evaluate_checkpoint(load_run_config(checkpoint), checkpoint, compare_base=True,
                                         out_dir=eval_dir, base_cache=self.base_cache)
        except Exception as err:
            print(f"final evaluation of {checkpoint} failed: {err!r}", flush=True)
            return {}
        metrics = final_eval_metrics(report)
        if self.logger:
            self.logger.log_metrics(metrics, step=int(self.best_epoch))
            self.logger.log_artifacts(str(eval_dir), "eval")
        return metrics

    def close(self) -> None:
        self._put_final()  # a training function that ended without on_end
        if self.logger:
            try:
                self.logger.flush()
                self.logger.close()
            except Exception:  # tracking must never fail a trial
                pass


def final_eval_metrics(report: dict) -> dict[str, float]:
    """The MLflow metrics of a final evaluation (`lora_train.evaluate.evaluate_checkpoint` report).

    Per label (base, adapter): `eval/<label>_abs_rel`, `_delta1`, `_tau103` and the AbsRel interval
    `eval/<label>_abs_rel_ci_low`, `_ci_high`; the paired adapter − base difference
    `eval/abs_rel_delta`, `eval/abs_rel_delta_ci_low`, `_ci_high`; with a retention set,
    `retention/abs_rel` (the adapter's), `retention/base_abs_rel`, `retention/abs_rel_delta` and its
    interval. Non-finite values are left out (an interval over one scene is (-inf, inf), which MLflow
    cannot plot); the per-scene and per-window numbers are in the `eval/metrics.json` artifact.
    """
    keys = ("abs_rel", "delta1", "tau103", "abs_rel_ci_low", "abs_rel_ci_high")
    delta_keys = ("abs_rel_delta", "abs_rel_delta_ci_low", "abs_rel_delta_ci_high")
    metrics = {f"eval/{label}_{key}": values[key] for label, values in report["results"].items()
               for key in keys if key in values}
    metrics.update({f"eval/{key}": report["comparison"][key] for key in delta_keys if "comparison" in report})
    retention = report.get("retention") or {}
    for label, name in (("adapter", "retention/abs_rel"), ("base", "retention/base_abs_rel")):
        if label in retention.get("results", {}):
            metrics[name] = retention["results"][label]["abs_rel"]
    metrics.update({f"retention/{key}": retention["comparison"][key] for key in delta_keys
                    if "comparison" in retention})
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def adapter_param_count(checkpoint_dir: str) -> int:
    """Number of trainable parameters saved in a PEFT adapter file."""
    from safetensors import safe_open

    total = 0
    path = Path(checkpoint_dir) / "adapter_model.safetensors"
    if not path.is_file():
        return 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            total += n
    return total


def _numeric(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out
