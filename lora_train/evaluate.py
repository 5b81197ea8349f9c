"""Evaluate VGGT (optionally with a LoRA adapter) on validation windows.

    python -m lora_train.evaluate --config tiny_demo --adapter runs/demo/checkpoints/epoch_0003 --compare-base

Writes to `--out` (default `<train.output_dir>/eval`): `metrics.json`, `metrics.txt` and
`visualizations/window_XXX.png` (rows = views; columns = input | prediction(s) | GT | error map).

Depth metrics follow `lora_train.metrics.depth_metrics` (per frame, averaged over the frames of a
window, then over windows); the prediction is aligned to the metric GT (default: one median scale
per window, since VGGT predicts in the first-frame normalised scale). Camera metrics follow
`lora_train.metrics.pose_metrics` on all frame pairs of a window, averaged over windows.

`metrics.json` also keeps every window's metrics with its identity (`per_window`), means per scene
(`per_scene`), the AbsRel mean's 95 % cluster-bootstrap interval over scenes (`abs_rel_ci_low`,
`abs_rel_ci_high`, `num_scenes`; `lora_train.uncertainty`) and, base and adapter together, the
paired adapter − base difference with its interval (`comparison`).

Forgetting: with `eval.retention_root` (or `eval.retention_synthetic`) set, a validation report also
scores base and adapter on every scene of that set from the base's own domain (`build_retention_set`)
and adds a `retention` section of the same layout (`results`, `per_window`, `comparison`,
`windows_hash`): `comparison.abs_rel_delta` > 0 means the adapter forgot some of the base's domain.
"""

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from lora_train.base_eval_cache import BaseEvalCache
from lora_train.checkpointing import load_run_config
from lora_train.config import TrainConfig, apply_overrides, load_config, validation_protocol
from lora_train.errors import ArgumentParser, UserError, cli_main
from lora_train.losses import normalize_gt
from lora_train.metrics import (
    ALIGN_MODES,
    DEPTH_METRIC_KEYS,
    depth_metrics,
    pose_metrics,
)
from lora_train.model import pose_encoding_to_extri_intri
from lora_train.runtime import parse_overrides
from lora_train.uncertainty import Interval, cluster_bootstrap, paired_difference
from lora_train.visualize import save_visualization
from vggt_common.files import atomic_write

HEADLINE_KEYS = DEPTH_METRIC_KEYS + ("rra30", "rta30", "auc30", "loss")
VALIDATION_FILE = "validation.json"  # in train.output_dir: the protocol and the windows it scores
# `eval.retention_synthetic`: this many scenes of the family, generated with a seed the tiny base's
# training set (seed 0) does not use, so the retention scenes are held out from the base's training.
RETENTION_SYNTHETIC_SCENES = 4
RETENTION_SYNTHETIC_SEED = 1


def write_validation_record(output_dir, config: TrainConfig, val_set) -> dict:
    """Record which windows this run is validated on: `<output_dir>/validation.json` holds the
    protocol (`validation_protocol`), the window list and its hash (`ETH3DWindows.describe`)."""
    record = {"protocol": validation_protocol(config), **val_set.describe()}
    atomic_write(Path(output_dir) / VALIDATION_FILE, json.dumps(record, indent=1))
    return record
WINDOW_ID_KEYS = ("scene", "key_view", "companion_views")


@torch.no_grad()
def evaluate_windows(
    model: torch.nn.Module,
    dataset,
    align: str = "median",
    *,
    loss_fn=None,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    max_windows: int | None = None,
    on_window=None,
) -> list[dict]:
    """Depth and camera metrics of `model` on each window of `dataset`.

    Args:
        model: VGGT (plain or PEFT-wrapped); put in eval mode for the call, restored afterwards.
        dataset: sequence of window dicts (`images [S,3,H,W]`, `depths [S,H,W]` metres,
            `point_masks [S,H,W]`, `extrinsics [S,3,4]`, `scene` str, `view_names` list[str] with
            the key view first, ...).
        align: depth alignment, one of `lora_train.metrics.ALIGN_MODES`.
        loss_fn: optional `VGGTLoss`; adds `loss` (mean objective on first-frame-normalised GT).
        device: where to run (default: the model's device).
        amp_dtype: autocast dtype (bf16 on GPU) or None for fp32.
        max_windows: evaluate only the first N windows.
        on_window: optional callback `(index, window, predictions)` (e.g. for visualisations).

    Returns:
        One record per window, in dataset order: its identity `scene`, `key_view`,
        `companion_views` (`WINDOW_ID_KEYS`), then `abs_rel, sq_rel, rmse, log_rmse, delta1,
        delta2, delta3, tau103` and, with a camera head, `rra5/15/30, rta5/15/30, rot_err_mean,
        trans_err_mean, auc30`; `loss` with `loss_fn`. A value is NaN where the window had no
        valid pixel.
    """
    from lora_train.data import collate_windows

    if align not in ALIGN_MODES:
        raise UserError(f"--align {align!r}: expected one of {', '.join(ALIGN_MODES)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    count = len(dataset) if max_windows is None else min(len(dataset), max_windows)
    if count == 0:
        raise UserError("evaluation: the validation set has no windows")
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    per_window: list[dict] = []
    try:
        for index in range(count):
            window = dataset[index]
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate_windows([window]).items()}
            with autocast:
                predictions = model(batch["images"])
            predictions = {k: v.float() if torch.is_tensor(v) else v for k, v in predictions.items()}
            metrics = depth_metrics(
                predictions["depth"][0, ..., 0].cpu().numpy(),
                window["depths"].numpy(),
                window["point_masks"].numpy(),
                align=align,
            )
            if "pose_enc" in predictions:
                extrinsics, _ = pose_encoding_to_extri_intri(predictions["pose_enc"], tuple(batch["images"].shape[-2:]))
                pose = pose_metrics(extrinsics[0].cpu().numpy(), window["extrinsics"].numpy())
                metrics.update({k: v for k, v in pose.items() if k != "num_pairs"})
            if loss_fn is not None:
                metrics["loss"] = float(loss_fn(predictions, normalize_gt(batch))["objective"])
            identity = {"scene": window["scene"], "key_view": window["view_names"][0],
                        "companion_views": list(window["view_names"][1:])}
            per_window.append({**identity, **metrics})
            if on_window is not None:
                on_window(index, window, predictions)
    finally:
        model.train(was_training)
    return per_window


def mean_metrics(per_window: list[dict]) -> dict[str, float]:
    """Means over windows of the metrics of `evaluate_windows` records (NaN windows skipped), and
    `num_windows`."""
    out = {}
    for key in per_window[0]:
        if key in WINDOW_ID_KEYS:
            continue
        values = [m[key] for m in per_window if math.isfinite(m[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    out["num_windows"] = len(per_window)
    return out


def evaluate_model(model: torch.nn.Module, dataset, align: str = "median", **options) -> dict[str, float]:
    """Mean depth and camera metrics of `model` over the windows of `dataset`.

    Takes the arguments of `evaluate_windows`; returns `mean_metrics` of its records: the metrics
    named there, means over windows (NaN windows skipped), and `num_windows`.
    """
    return mean_metrics(evaluate_windows(model, dataset, align, **options))


# --- reports -------------------------------------------------------------------------------------


def format_metrics_table(results: dict[str, dict]) -> str:
    """Plain-text table, one column per evaluated model (and a change column for two)."""
    labels = list(results)
    keys = [k for k in HEADLINE_KEYS if k in results[labels[0]]]
    keys += [k for k in results[labels[0]] if k not in keys]
    header = f"{'metric':<16}" + "".join(f"{label:>14}" for label in labels)
    if len(labels) == 2:
        header += f"{'change':>14}"
    lines = [header, "-" * len(header)]
    for key in keys:
        values = [results[label].get(key, float("nan")) for label in labels]
        line = f"{key:<16}" + "".join(f"{v:>14.4f}" if isinstance(v, float) else f"{v:>14}" for v in values)
        if len(labels) == 2 and all(isinstance(v, float) for v in values):
            line += f"{values[1] - values[0]:>+14.4f}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def summarize(per_window: list[dict]) -> dict[str, float]:
    """`mean_metrics` plus the AbsRel mean's cluster-bootstrap interval (`abs_rel_ci_low`,
    `abs_rel_ci_high`, see `lora_train.uncertainty`) and the `num_scenes` it rests on."""
    interval = cluster_bootstrap([w["abs_rel"] for w in per_window], [w["scene"] for w in per_window])
    return {**mean_metrics(per_window), "abs_rel_ci_low": interval.low, "abs_rel_ci_high": interval.high,
            "num_scenes": interval.num_scenes}


def paired_comparison(base: list[dict], adapter: list[dict]) -> dict[str, float]:
    """Paired AbsRel difference adapter − base over the same windows: `abs_rel_delta`, its interval
    (`abs_rel_delta_ci_low`, `abs_rel_delta_ci_high`), `confidence`, `num_scenes`, `num_windows`."""
    if [[w[k] for k in WINDOW_ID_KEYS] for w in base] != [[w[k] for k in WINDOW_ID_KEYS] for w in adapter]:
        raise ValueError("paired_comparison: base and adapter were evaluated on different windows")
    delta = paired_difference([w["abs_rel"] for w in adapter], [w["abs_rel"] for w in base],
                              [w["scene"] for w in base])
    return {"abs_rel_delta": delta.mean, "abs_rel_delta_ci_low": delta.low, "abs_rel_delta_ci_high": delta.high,
            "confidence": delta.confidence, "num_scenes": delta.num_scenes, "num_windows": delta.num_windows}


def format_comparison(comparison: dict[str, float]) -> str:
    """One line: the paired AbsRel difference with its interval, scenes and windows."""
    interval = Interval(mean=comparison["abs_rel_delta"], low=comparison["abs_rel_delta_ci_low"],
                        high=comparison["abs_rel_delta_ci_high"], confidence=comparison["confidence"],
                        num_scenes=comparison["num_scenes"], num_windows=comparison["num_windows"])
    return f"abs_rel adapter - base (paired): {interval}\n"


def write_report(out_dir: Path, results: dict[str, dict], info: dict, details: dict | None = None) -> None:
    """`metrics.json` (info, results and the `details` sections) and `metrics.txt` (info, the table,
    the paired comparison if `details` has one, and the same for the `retention` section)."""
    details = details or {}
    atomic_write(out_dir / "metrics.json", json.dumps({**info, "results": results, **details}, indent=2))
    text = "".join(f"{k}: {v}\n" for k, v in info.items()) + "\n" + format_metrics_table(results)
    if "comparison" in details:
        text += format_comparison(details["comparison"])
    if "retention" in details:
        retention = details["retention"]
        text += "\nretention (the base's own domain):\n" + format_metrics_table(retention["results"])
        if "comparison" in retention:
            text += format_comparison(retention["comparison"])
    atomic_write(out_dir / "metrics.txt", text)


def build_retention_set(config: TrainConfig):
    """The retention windows of `config` (`ETH3DWindows`), or None when no retention set is set.

    Every scene under `eval.retention_root` (or the cached `eval.retention_synthetic` scenes) is
    scored, with the validation protocol's views, width, `max_windows` and seed.
    """
    from lora_train.data import ETH3DWindows
    from lora_train.data.cache import ensure_synthetic_scenes
    from lora_train.data.windows import discover_scenes

    e = config.eval
    if e.retention_root is None and e.retention_synthetic is None:
        return None
    if e.retention_root is not None:
        root = Path(e.retention_root).expanduser()
        if not root.is_dir():
            raise UserError(f"eval.retention_root: not a directory: {e.retention_root}")
    else:
        root = ensure_synthetic_scenes(e.retention_synthetic, RETENTION_SYNTHETIC_SCENES,
                                       seed=RETENTION_SYNTHETIC_SEED)
    scenes = discover_scenes(root)
    protocol = validation_protocol(config)
    return ETH3DWindows(root, scenes=scenes, split="val", val_scenes=scenes, num_views=protocol["num_views"],
                        width=protocol["width"], seed=protocol["seed"], max_windows=protocol["max_windows"],
                        cache_dir=config.data.cache_dir)


# --- a checkpoint, end to end ----------------------------------------------------------------------


def evaluate_checkpoint(config: TrainConfig, adapter_dir: str | Path | None = None, *, compare_base: bool = False,
                        out_dir: str | Path, base_cache: str | Path | None = None, split: str = "val",
                        align: str | None = None, max_windows: int | None = None,
                        num_vis: int | None = None) -> dict:
    """Evaluate the base model, an adapter, or both on the same windows; write the report.

    Args:
        config: the training config (model, data, loss, eval sections).
        adapter_dir: a saved adapter (or training checkpoint); None evaluates the base alone.
        compare_base: also evaluate the frozen base (needs `adapter_dir`).
        out_dir: where `metrics.json`, `metrics.txt` and `visualizations/*.png` go.
        base_cache: folder that keeps the base's results between calls with the same settings.
        split: "val" or "train" windows.
        align: depth alignment (default `eval.align`).
        max_windows: evaluate this many windows of the protocol (sets `eval.max_windows`).
        num_vis: windows to draw (default `eval.num_visualizations`).

    Returns:
        As written to `metrics.json`: `{**info, "results": {label: summarize(...)}, "per_scene":
        {label: {scene: mean_metrics(...)}}, "per_window": {label: [evaluate_windows record]}}`
        with label "base" and/or "adapter", plus `"comparison": paired_comparison(...)` when both
        were evaluated, plus (split "val" with a retention set) `"retention": {"windows_hash",
        "results", "per_window", "comparison"}` of base and adapter on `build_retention_set`.
    """
    from lora_train.builders import build_datasets, build_model, resolve_checkpoint
    from lora_train.losses import VGGTLoss
    from lora_train.runtime import autocast_dtype, resolve_device

    if compare_base and adapter_dir is None:
        raise UserError("--compare-base needs --adapter")
    if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise UserError(f"--adapter: {adapter_dir} has no adapter_config.json")
    align = align or config.eval.align
    num_vis = config.eval.num_visualizations if num_vis is None else num_vis
    if max_windows is not None:  # scored on fewer windows than the protocol: the hash tells
        config = apply_overrides(config, {"eval.max_windows": max_windows})
    out_dir = Path(out_dir)

    device = resolve_device(config.train.device)
    amp = autocast_dtype(config.train.precision, device)
    train_set, val_set = build_datasets(config)
    dataset = val_set if split == "val" else train_set
    checkpoint = resolve_checkpoint(config.model.checkpoint)
    model = build_model(config, adapter_dir, trainable=False, base_only=adapter_dir is None).to(device)
    loss_fn = VGGTLoss(**vars(config.loss))

    variants = {"adapter": contextlib.nullcontext} if adapter_dir else {"base": contextlib.nullcontext}
    if compare_base:
        variants = {"base": model.disable_adapter, "adapter": contextlib.nullcontext}
    run = {"model": model, "align": align, "loss_fn": loss_fn, "device": device, "amp": amp,
           "max_windows": max_windows}

    def base_cache_for(split_name, vis):
        if not (base_cache and "base" in variants and checkpoint is not None):
            return None
        return BaseEvalCache(base_cache, BaseEvalCache.settings(
            config, checkpoint, device_type=device.type, split=split_name, align=align,
            max_windows=max_windows, num_vis=vis))

    per_window, shown, base_from_cache = _evaluate_variants(dataset, variants, base_cache_for(split, num_vis),
                                                            num_vis=num_vis, **run)
    for index, (window, predictions) in sorted(shown.items()):
        save_visualization(out_dir / "visualizations" / f"window_{index:03d}.png", window, predictions, align)
    results = {label: summarize(records) for label, records in per_window.items()}
    per_scene = {label: {scene: mean_metrics([w for w in records if w["scene"] == scene])
                         for scene in dict.fromkeys(w["scene"] for w in records)}
                 for label, records in per_window.items()}
    details = {"per_scene": per_scene, "per_window": per_window}
    if len(per_window) == 2:
        details["comparison"] = paired_comparison(per_window["base"], per_window["adapter"])
    retention_set = build_retention_set(config) if split == "val" else None
    if retention_set is not None:  # the adapter's change on the base's own domain: base and adapter
        retained_variants = {"base": model.disable_adapter, "adapter": contextlib.nullcontext} if adapter_dir \
            else variants
        retained, _, _ = _evaluate_variants(retention_set, retained_variants, base_cache_for("retention", 0),
                                            num_vis=0, **run)
        details["retention"] = {"windows_hash": retention_set.describe()["windows_hash"],
                                "results": {label: summarize(records) for label, records in retained.items()},
                                "per_window": retained}
        if len(retained) == 2:
            details["retention"]["comparison"] = paired_comparison(retained["base"], retained["adapter"])
    info = {
        "align": align,
        "split": split,
        "adapter": str(adapter_dir) if adapter_dir else None,
        "base_checkpoint": str(checkpoint) if checkpoint else None,
        "num_windows": results[next(iter(results))]["num_windows"],
        "base_from_cache": base_from_cache,
        "num_visualizations": len(shown),
        "windows_hash": val_set.describe()["windows_hash"] if split == "val" else None,
    }
    write_report(out_dir, results, info, details)
    return {**info, "results": results, **details}


def _evaluate_variants(dataset, variants: dict, cache: BaseEvalCache | None, *, model, align, loss_fn, device,
                       amp, max_windows, num_vis) -> tuple[dict, dict, bool]:
    """`evaluate_windows` of each variant (label → context that selects it, e.g. the base through
    `disable_adapter`) on `dataset`; the base from `cache` when it holds it (and into it otherwise).

    Returns:
        ({label: records}, {window index < num_vis: (window, {label: depth [S,H,W]})}, base from cache?)
    """
    cached = cache.load() if cache is not None else None
    if cached is not None and "per_window" not in cached[0]:  # an entry from before per-window records
        cached = None
    per_window, shown, cached_depths = {}, {}, {}
    if cached is not None:
        per_window["base"], cached_depths = cached[0]["per_window"], cached[1]
    for label, context in variants.items():
        if label in per_window:
            continue

        def keep(index, window, predictions, label=label):
            if index < num_vis:  # a cached base's depth comes first, as when it is evaluated
                first = {"base": cached_depths[index]} if index in cached_depths else {}
                shown.setdefault(index, (window, first))[1][label] = predictions["depth"][0, ..., 0].cpu().numpy()

        with context():
            per_window[label] = evaluate_windows(
                model, dataset, align, loss_fn=loss_fn, device=device, amp_dtype=amp,
                max_windows=max_windows, on_window=keep,
            )
        if label == "base" and cache is not None:
            cache.save({"per_window": per_window["base"]},
                       {index: depths["base"] for index, (_, depths) in shown.items()})
    return per_window, shown, cached is not None


# --- CLI -----------------------------------------------------------------------------------------


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m lora_train.evaluate",
        description="Depth and camera metrics of VGGT (+ LoRA adapter) on the validation windows.",
    )
    parser.add_argument("--config", default=None, help="YAML file or preset name (default: the adapter's training config)")
    parser.add_argument("--adapter", default=None, help="adapter / checkpoint directory (adapter_config.json, adapter_model.safetensors)")
    parser.add_argument("--compare-base", action="store_true", help="also evaluate the base model without the adapter")
    parser.add_argument("--align", default=None, choices=ALIGN_MODES, help="depth alignment (default: eval.align)")
    parser.add_argument("--out", default=None, help="output directory (default: <train.output_dir>/eval)")
    parser.add_argument("--split", default="val", choices=("val", "train"))
    parser.add_argument("--max-windows", type=int, default=None, help="default: eval.max_windows (all)")
    parser.add_argument("--num-vis", type=int, default=None, help="windows to visualise (default: eval.num_visualizations)")
    parser.add_argument("--base-cache", default=None,
                        help="folder that keeps the base's results between calls with the same settings (sweeps)")
    args, extra = parser.parse_known_args(argv)
    overrides = parse_overrides(extra)
    if args.config is not None:
        config = load_config(args.config, overrides)
    elif args.adapter is not None:  # the config the adapter was trained with
        config = apply_overrides(load_run_config(args.adapter), overrides)
    else:
        raise UserError("give --config (or --adapter with a training checkpoint, whose config is used)")
    out_dir = Path(args.out) if args.out else Path(config.train.output_dir) / "eval"
    report = evaluate_checkpoint(
        config, args.adapter, compare_base=args.compare_base, out_dir=out_dir, base_cache=args.base_cache,
        split=args.split, align=args.align, max_windows=args.max_windows, num_vis=args.num_vis,
    )
    print(format_metrics_table(report["results"]), end="")
    if "comparison" in report:
        print(format_comparison(report["comparison"]), end="")
    if "comparison" in report.get("retention", {}):
        print("retention: " + format_comparison(report["retention"]["comparison"]), end="")
    print(f"wrote {out_dir}/metrics.json, metrics.txt and {report['num_visualizations']} visualisation(s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
