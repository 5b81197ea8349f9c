"""VGGT-1B speed and peak memory on one GPU (inference and training steps, checkpointing on/off).

Run on a CUDA machine: `python benchmarks/bench_model_gpu.py`. Random weights; no download.
"""

import time

import torch

from lora_train.model import VGGT, VGGTConfig


def timed(fn, warmup=2, iters=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1000, torch.cuda.max_memory_allocated() / 2**30


def main():
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(torch.__version__, torch.cuda.get_device_name())
    t = time.perf_counter()
    with torch.device("meta"):
        VGGT(VGGTConfig())
    print(f"meta build VGGT-1B: {time.perf_counter() - t:.2f} s")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = VGGT(VGGTConfig(enable_point=False))
    weights_gb = torch.cuda.memory_allocated() / 2**30
    print(f"VGGT-1B camera+depth fp32 weights on GPU: {weights_gb:.2f} GiB")

    rows = []
    for frames, (h, w) in ((1, (350, 518)), (8, (350, 518)), (8, (518, 518))):
        images = torch.rand(1, frames, 3, h, w, device="cuda")
        model.eval()

        def infer():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                model(images)

        ms, gb = timed(infer)
        rows.append((f"S={frames} {h}x{w}", "inference bf16", "-", ms, gb))

    images = torch.rand(1, 8, 3, 350, 518, device="cuda")
    model.train()
    for scenario in ("all params", "depth_head only"):
        for param_name, param in model.named_parameters():
            param.requires_grad_(scenario == "all params" or param_name.startswith("depth_head."))
        model.aggregator.patch_embed.mask_token.requires_grad_(False)
        for ckpt in (False, True):
            model.set_gradient_checkpointing(ckpt)

            def step():
                model.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = model(images)
                (out["depth"].mean() + out["pose_enc"].square().mean()).backward()

            ms, gb = timed(step, warmup=1, iters=3)
            rows.append(("S=8 350x518", f"train step, grads: {scenario}", str(ckpt), ms, gb))

    print(f"{'input':16s} {'what':34s} {'ckpt':5s} {'ms':>8s} {'peak GiB':>9s}")
    for row in rows:
        print(f"{row[0]:16s} {row[1]:34s} {row[2]:5s} {row[3]:8.1f} {row[4]:9.2f}")


if __name__ == "__main__":
    main()
