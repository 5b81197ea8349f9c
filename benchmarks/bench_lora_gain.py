"""Does LoRA fine-tuning help? Frozen tiny base vs the same base + LoRA, on synthetic facades.

The tiny base was trained (fully, once, cached) on the synthetic `generic` scene family; the
facade family is a domain shift. This script trains a LoRA adapter on facade training scenes with
the `tiny_demo` config (a few CPU minutes) and evaluates base and adapter on the held-out facade
validation scenes with the same metric code, printing both side by side.

    python benchmarks/bench_lora_gain.py [--config tiny_demo] [--<dotted.key> VALUE ...]
"""

import argparse
import tempfile
import time

from lora_train.builders import build_datasets, build_model
from lora_train.config import load_config
from lora_train.evaluate import evaluate_model, format_metrics_table
from lora_train.losses import VGGTLoss
from lora_train.runtime import parse_overrides
from lora_train.tiny_base import ensure_tiny_base
from lora_train.train import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny_demo")
    args, extra = parser.parse_known_args()
    overrides = parse_overrides(extra)
    overrides.setdefault("train.output_dir", tempfile.mkdtemp(prefix="bench_lora_gain_"))
    config = load_config(args.config, overrides)

    start = time.time()
    ensure_tiny_base()  # one-time: trains and caches the base if needed
    base_seconds = time.time() - start
    _, val_set = build_datasets(config)
    loss_fn = VGGTLoss(**vars(config.loss))
    align = config.eval.align

    frozen = evaluate_model(build_model(config, base_only=True), val_set, align, loss_fn=loss_fn)

    start = time.time()
    result = run_training(config)
    train_seconds = time.time() - start
    adapted = evaluate_model(build_model(config, result.last_checkpoint, trainable=False), val_set, align, loss_fn=loss_fn)

    print()
    print(f"config {args.config}: strategy {config.lora.strategy}, rank {config.lora.rank}, "
          f"{config.train.epochs} epochs, {len(val_set)} val windows (facade, held-out scenes), align {align}")
    print(f"tiny base: {base_seconds:.0f} s (0 when cached); LoRA training: {train_seconds:.0f} s, status {result.status}")
    print(format_metrics_table({"frozen base": frozen, "base + LoRA": adapted}), end="")
    ratio = adapted["abs_rel"] / frozen["abs_rel"]
    print(f"AbsRel  frozen {frozen['abs_rel']:.4f}  ->  LoRA {adapted['abs_rel']:.4f}   (x{ratio:.2f})")
    print(f"delta1  frozen {frozen['delta1']:.4f}  ->  LoRA {adapted['delta1']:.4f}")


if __name__ == "__main__":
    main()
