"""VGGT-1B LoRA training steps on one GPU: strategies A/B/C side by side.

For each strategy (rank 16): trainable parameters, step time and peak GPU memory of one
optimizer step (bf16 autocast, gradient checkpointing on and off) on S views of 350x518,
with the upstream objective (camera + depth) on a random but well-formed batch. Random
weights (nothing is downloaded); the numbers are about compute and memory, not accuracy.

Run on a CUDA machine: `python benchmarks/bench_lora_gpu.py [--views 8] [--steps 3]`.
"""

import argparse

import torch

from bench_model_gpu import timed  # this folder is on sys.path when run as a script
from lora_train.losses import VGGTLoss, normalize_gt
from lora_train.lora import LoraSettings, apply_lora
from lora_train.model import VGGT, VGGTConfig


def random_batch(views: int, height: int, width: int, device: torch.device) -> dict:
    """A well-formed GT batch: fronto-parallel cameras stepping along x, depth 2–4 m."""
    fx = fy = 0.9 * width
    intrinsics = torch.tensor([[fx, 0, width / 2], [0, fy, height / 2], [0, 0, 1.0]], device=device)
    extrinsics = torch.zeros(1, views, 3, 4, device=device)
    extrinsics[..., :3, :3] = torch.eye(3, device=device)
    extrinsics[0, :, 0, 3] = -0.2 * torch.arange(views, device=device)
    depths = 2.0 + 2.0 * torch.rand(1, views, height, width, device=device)
    v, u = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    cam_points = torch.stack(((u - width / 2) / fx, (v - height / 2) / fy, torch.ones_like(u, dtype=torch.float)), -1)
    cam_points = cam_points[None, None] * depths[..., None]
    world_points = cam_points - extrinsics[..., :3, 3][:, :, None, None, :]
    return {
        "images": torch.rand(1, views, 3, height, width, device=device),
        "depths": depths,
        "extrinsics": extrinsics,
        "intrinsics": intrinsics.expand(1, views, 3, 3).clone(),
        "cam_points": cam_points,
        "world_points": world_points,
        "point_masks": torch.ones(1, views, height, width, dtype=torch.bool, device=device),
    }


def measure(strategy: str, checkpointing: bool, batch: dict, steps: int) -> tuple[int, float, float]:
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = VGGT(VGGTConfig(enable_point=False, gradient_checkpointing=checkpointing))
    model = apply_lora(model, LoraSettings(strategy=strategy, rank=16))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    loss_fn = VGGTLoss()
    target = normalize_gt(batch)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            predictions = model(batch["images"])
        loss_fn(predictions, target)["objective"].backward()
        optimizer.step()

    ms, peak_gib = timed(step, warmup=1, iters=steps)  # the warm-up allocates and picks kernels
    count = sum(p.numel() for p in trainable)
    del model, optimizer
    torch.cuda.empty_cache()
    return count, ms, peak_gib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}; S={args.views}, 350x518, bf16 autocast")
    batch = random_batch(args.views, 350, 518, torch.device("cuda"))
    print(f"{'strategy':8s} {'trainable':>12s} {'ckpt':>5s} {'ms/step':>9s} {'peak GiB':>9s}")
    for strategy in ("A", "B", "C"):
        for checkpointing in (False, True):
            count, ms, gib = measure(strategy, checkpointing, batch, args.steps)
            print(f"{strategy:8s} {count:12,d} {str(checkpointing):>5s} {ms:9.1f} {gib:9.2f}", flush=True)


if __name__ == "__main__":
    main()
