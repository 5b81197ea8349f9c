"""Evaluate VGGT (optionally with a LoRA adapter) on validation windows.

    python -m lora_train.evaluate --config tiny_demo --adapter runs/demo/checkpoints/epoch_0003 --compare-base

Writes to `--out` (default `<train.output_dir>/eval`): `metrics.json`, `metrics.txt` and
`visualizations/window_XXX.png` (rows = views; columns = input | prediction(s) | GT | error map).

Depth metrics follow `lora_train.metrics.depth_metrics` (per frame, averaged over the frames of a
window, then over windows); the prediction is aligned to the metric GT (default: one median scale
per window, since VGGT predicts in the first-frame normalised scale). Camera metrics follow
`lora_train.metrics.pose_metrics` on all frame pairs of a window, averaged over windows.
"""

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from lora_train.base_eval_cache import BaseEvalCache
from lora_train.errors import ArgumentParser, UserError, cli_main
from lora_train.losses import normalize_gt
from lora_train.metrics import ALIGN_MODES, DEPTH_METRIC_KEYS, depth_metrics, pose_metrics
from lora_train.model import pose_encoding_to_extri_intri
from lora_train.visualize import save_visualization

HEADLINE_KEYS = DEPTH_METRIC_KEYS + ("rra30", "rta30", "auc30", "loss")


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset,
    align: str = "median",
    *,
    loss_fn=None,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    max_windows: int | None = None,
    on_window=None,
) -> dict[str, float]:
    """Mean depth and camera metrics of `model` over the windows of `dataset`.

    Args:
        model: VGGT (plain or PEFT-wrapped); put in eval mode for the call, restored afterwards.
        dataset: sequence of window dicts (`images [S,3,H,W]`, `depths [S,H,W]` metres,
            `point_masks [S,H,W]`, `extrinsics [S,3,4]`, ...).
        align: depth alignment, one of `lora_train.metrics.ALIGN_MODES`.
        loss_fn: optional `VGGTLoss`; adds `loss` (mean objective on first-frame-normalised GT).
        device: where to run (default: the model's device).
        amp_dtype: autocast dtype (bf16 on GPU) or None for fp32.
        max_windows: evaluate only the first N windows.
        on_window: optional callback `(index, window, predictions)` (e.g. for visualisations).

    Returns:
        `abs_rel, sq_rel, rmse, log_rmse, delta1, delta2, delta3, tau103` and, with a camera head,
        `rra5/15/30, rta5/15/30, rot_err_mean, trans_err_mean, auc30`; `loss` with `loss_fn`;
        `num_windows`. Means over windows (NaN windows skipped).
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
            per_window.append(metrics)
            if on_window is not None:
                on_window(index, window, predictions)
    finally:
        model.train(was_training)
    out = {}
    for key in per_window[0]:
        values = [m[key] for m in per_window if math.isfinite(m[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    out["num_windows"] = count
    return out


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


def write_report(out_dir: Path, results: dict[str, dict], info: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("metrics.json", json.dumps({**info, "results": results}, indent=2)),
        ("metrics.txt", "".join(f"{k}: {v}\n" for k, v in info.items()) + "\n" + format_metrics_table(results)),
    ):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out_dir / name)


# --- CLI -----------------------------------------------------------------------------------------


def _load_config(args, overrides):
    """--config, or else the config saved in the adapter's training checkpoint."""
    from lora_train.config import apply_overrides, config_from_dict, load_config
    from lora_train.train import load_trainer_state

    if args.config is not None:
        return load_config(args.config, overrides)
    if args.adapter is None:
        raise UserError("give --config (or --adapter with a training checkpoint, whose config is used)")
    state = load_trainer_state(args.adapter)
    config = config_from_dict(state["config"], source=f"{args.adapter}/trainer_state.pt")
    return apply_overrides(config, overrides)


@cli_main
def main(argv: list[str] | None = None) -> int:
    from lora_train.base_model import resolve_checkpoint
    from lora_train.losses import VGGTLoss
    from lora_train.lora import load_adapter
    from lora_train.config import vggt_config
    from lora_train.model import VGGT, load_pretrained
    from lora_train.train import autocast_dtype, build_datasets, parse_overrides, resolve_device, DistInfo

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
    parser.add_argument("--max-windows", type=int, default=None, help="default: data.max_val_windows (all)")
    parser.add_argument("--num-vis", type=int, default=None, help="windows to visualise (default: eval.num_visualizations)")
    parser.add_argument("--base-cache", default=None,
                        help="folder that keeps the base's results between calls with the same settings (sweeps)")
    args, extra = parser.parse_known_args(argv)
    config = _load_config(args, parse_overrides(extra))
    if args.compare_base and args.adapter is None:
        raise UserError("--compare-base needs --adapter")
    if args.adapter is not None and not (Path(args.adapter) / "adapter_config.json").is_file():
        raise UserError(f"--adapter: {args.adapter} has no adapter_config.json")
    align = args.align or config.eval.align
    num_vis = config.eval.num_visualizations if args.num_vis is None else args.num_vis
    out_dir = Path(args.out) if args.out else Path(config.train.output_dir) / "eval"

    device = resolve_device(config.train.device, DistInfo())
    amp = autocast_dtype(config.train.precision, device)
    train_set, val_set = build_datasets(config)
    dataset = val_set if args.split == "val" else train_set

    model = VGGT(vggt_config(config.model))
    checkpoint = resolve_checkpoint(config.model.checkpoint)
    if checkpoint is not None:
        load_pretrained(model, checkpoint)
    if args.adapter is not None:
        model = load_adapter(model, args.adapter)
    model.to(device)
    loss_fn = VGGTLoss(**vars(config.loss))

    variants = {"adapter": contextlib.nullcontext} if args.adapter else {"base": contextlib.nullcontext}
    if args.compare_base:
        variants = {"base": model.disable_adapter, "adapter": contextlib.nullcontext}
    max_windows = args.max_windows or config.data.max_val_windows
    cache, cached = None, None
    if args.base_cache and "base" in variants and checkpoint is not None:
        cache = BaseEvalCache(args.base_cache, BaseEvalCache.settings(
            config, checkpoint, device_type=device.type, split=args.split, align=align,
            max_windows=max_windows, num_vis=num_vis))
        cached = cache.load()
    results, shown, cached_depths = {}, {}, {}
    if cached is not None:
        results["base"], cached_depths = cached
    for label, context in variants.items():
        if label in results:
            continue

        def keep(index, window, predictions, label=label):
            if index < num_vis:  # a cached base's depth comes first, as when it is evaluated
                first = {"base": cached_depths[index]} if index in cached_depths else {}
                shown.setdefault(index, (window, first))[1][label] = predictions["depth"][0, ..., 0].cpu().numpy()

        with context():
            results[label] = evaluate_model(
                model, dataset, align, loss_fn=loss_fn, device=device, amp_dtype=amp,
                max_windows=max_windows, on_window=keep,
            )
        if label == "base" and cache is not None:
            cache.save(results["base"], {index: depths["base"] for index, (_, depths) in shown.items()})
    for index, (window, predictions) in sorted(shown.items()):
        save_visualization(out_dir / "visualizations" / f"window_{index:03d}.png", window, predictions, align)
    info = {
        "align": align,
        "split": args.split,
        "adapter": str(args.adapter) if args.adapter else None,
        "base_checkpoint": str(checkpoint) if checkpoint else None,
        "num_windows": results[next(iter(results))]["num_windows"],
        "base_from_cache": cached is not None,
    }
    write_report(out_dir, results, info)
    print(format_metrics_table(results), end="")
    print(f"wrote {out_dir}/metrics.json, metrics.txt and {len(shown)} visualisation(s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
