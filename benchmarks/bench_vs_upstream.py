"""Our VGGT vs upstream VGGT on one GPU: inference and LoRA training steps, side by side.

    python benchmarks/bench_vs_upstream.py [--upstream PATH/TO/facebookresearch-vggt] [--tiny]

Both models get the same random weights (the state dicts share keys) and the same inputs: S=8
views of 350x518 (`--tiny`, automatic without CUDA: the tiny model on CPU, 4 views of 56x84).

Baseline. With `--upstream PATH` (a checkout of facebookresearch/vggt, imported by path here and
nowhere else in the project) the baseline is upstream's model, trained as its trainer does it:
GradScaler (enabled even for bf16), per-group clipping, plain AdamW over all parameters, its
`training/loss.py` objective when importable, gradient checkpointing whenever its aggregator is in
train mode (strategies B, C). Without it, or when it cannot be imported, the baseline is OUR model
in that same upstream-equivalent setup: fp32 weights, bf16 autocast, PyTorch's default SDPA, no
compilation, upstream's step structure. The header says which baseline ran.

Ours. The same model with the levers of `lora_train` switched on one at a time (each row adds one
to the row above, so each lever is measured on and off), ending at everything on:
  loop      our step: no GradScaler, no host sync inside the step (lora_train.train.HostCopy)
  fused     fused AdamW (`optim.fused`)
  sdpa      fastest SDPA kernel that computes correctly, picked by a micro-benchmark here
            (`model.attention_backend`)
  bf16 base frozen aggregator weights stored in bf16 (`model.base_dtype`)
  compile   regional torch.compile of the aggregator blocks (`model.compile`); its first step
            (compilation included) is printed apart, as the training loop's `time/warmup_s`
B and C also run without gradient checkpointing (faster, more memory). Inference runs the sdpa,
bf16-base and compile rungs.

Checks. Outputs (depth, depth_conf, pose_enc) of the baseline and of ours under bf16 autocast
against an fp32 reference (TF32 off for this check; on for the timings, as upstream trains),
as relative L2 error ||x - ref|| / ||ref||; bf16 tolerance: 5e-2. Ours is checked with every
lever but compilation, and its compiled outputs against its eager ones (a check under other
TF32 flags would recompile it). With upstream: its fp32 output against ours (same weights →
equal up to fp32 rounding).

FLOPs are analytic, counted from the shapes each layer ran on in the fp32 reference pass:
Linear 2·tokens·in·out, Conv2d 2·out_pixels·out·in·k², ConvTranspose2d 2·in_pixels·in·out·k²,
attention 4·B·N²·dim (QKᵀ and PV). A training step counts the forward, the input gradient of
every layer behind the first LoRA layer (= its forward FLOPs; attention 2×) and the adapters
(3× their forward); checkpoint recomputation is not counted (the MFU convention). % of peak is
against the GPU's dense bf16 peak from `PEAK_BF16_TFLOPS` (n/a for other GPUs); the heads run
in fp32, so % of peak understates the aggregator's own rate a little.

A time budget (`--budget-s`) skips the optional rows (lever-by-lever rungs, no-checkpointing
rows) once exceeded; skipped rows say so. One model per strategy is built (by
`lora_train.builders.build_model`) and reused by its rows; memory is freed between strategies.
"""

import argparse
import contextlib
import gc
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch._dynamo.utils import counters

from lora_train.builders import build_model
from lora_train.config import LoraSettings, OptimConfig, load_config
from lora_train.lora import apply_lora, select_targets
from lora_train.losses import VGGTLoss, normalize_gt
from lora_train.model.blocks import Attention, sdpa_priority
from lora_train.model.compile import compile_blocks
from lora_train.model.precision import cast_frozen_base
from lora_train.train import HostCopy, clip_gradients, clip_groups, forward_losses, make_optimizer

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets; the first key in the GPU's name wins.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0}
BF16_TOLERANCE = 5e-2
STRATEGIES = ("A", "B", "C")
RANK = 16


# --- timing ----------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, iters: int) -> tuple[float, float, float | None]:
    """(first call s, steady ms per call, peak GiB during the steady calls or None on CPU)."""
    start = time.perf_counter()
    fn()
    synchronize(device)
    first_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    ms = (time.perf_counter() - start) / iters * 1000
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return first_s, ms, peak


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def tf32(enabled: bool):
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


# --- inputs ----------------------------------------------------------------------------------------


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


# --- analytic FLOPs ----------------------------------------------------------------------------------


@dataclass
class LayerCall:
    name: str
    flops: float
    kind: str  # "linear" | "conv" | "attention"
    tokens: int = 0  # Linear: rows; Conv: output pixels
    fan_in: int = 0  # in features, or in_channels·k² of a Conv2d
    fan_out: int = 0


@dataclass
class FlopCount:
    """Per-layer FLOPs of one forward pass, in execution order (see the module docstring)."""

    calls: list[LayerCall] = field(default_factory=list)

    @property
    def forward(self) -> float:
        return sum(c.flops for c in self.calls)

    def training_step(self, targets: set[str], rank: int) -> float:
        """Forward + input gradients behind the first LoRA layer + adapters (3× their forward)."""
        first = min((i for i, c in enumerate(self.calls) if c.name in targets), default=len(self.calls))
        backward = sum(c.flops * (2 if c.kind == "attention" else 1) for c in self.calls[first:])
        adapters = sum(2 * c.tokens * rank * (c.fan_in + c.fan_out) for c in self.calls if c.name in targets)
        return self.forward + backward + 3 * adapters


@contextlib.contextmanager
def count_flops(model: nn.Module):
    """Hooks that fill a `FlopCount` while `model` runs one forward pass."""
    count = FlopCount()

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0]
            if isinstance(module, nn.Linear):
                tokens = x.numel() // x.shape[-1]
                call = LayerCall(name, 2.0 * tokens * module.in_features * module.out_features, "linear",
                                 tokens, module.in_features, module.out_features)
            elif isinstance(module, nn.ConvTranspose2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                pixels = x.numel() // x.shape[1]
                call = LayerCall(name, 2.0 * pixels * module.in_channels * module.out_channels * k, "conv",
                                 pixels, module.in_channels, module.out_channels)
            elif isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                pixels = output.numel() // output.shape[1]
                fan_in = module.in_channels // module.groups * k
                call = LayerCall(name, 2.0 * pixels * fan_in * module.out_channels, "conv",
                                 pixels, fan_in, module.out_channels)
            else:  # Attention: x is [B, N, dim]
                batch, tokens, dim = x.shape
                call = LayerCall(name, 4.0 * batch * tokens * tokens * dim, "attention")
            count.calls.append(call)

        return record

    kinds = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, Attention)
    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, kinds)]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def fmt_flops(flops: float) -> str:
    return f"{flops / 1e12:.2f} TFLOP" if flops >= 1e11 else f"{flops / 1e9:.3f} GFLOP"


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


# --- checks ------------------------------------------------------------------------------------------

OUTPUT_KEYS = ("depth", "depth_conf", "pose_enc")


def relative_errors(outputs: dict, reference: dict) -> dict[str, float]:
    return {
        k: float((outputs[k].float() - reference[k]).norm() / reference[k].norm().clamp_min(1e-12))
        for k in OUTPUT_KEYS
    }


def fmt_errors(errors: dict[str, float]) -> str:
    worst = max(errors.values())
    verdict = "ok" if worst <= BF16_TOLERANCE else "ABOVE bf16 tolerance"
    return ", ".join(f"{k} {v:.2e}" for k, v in errors.items()) + f"  [{verdict}]"


def pick_attention_backend(device: torch.device, shapes: list[tuple[int, int, int, int]]) -> tuple[str, list[str]]:
    """Fastest `model.attention_backend` for these [B, heads, N, head_dim] shapes (bf16, forward +
    backward), among those whose output and gradients match the fp32 math kernel (2e-2 relative)."""
    if device.type != "cuda":
        return "default", ["CPU: PyTorch's default kernel (the setting only acts on CUDA)"]
    attention = torch.nn.functional.scaled_dot_product_attention
    cases = []  # (q, k, v, output gradient, fp32 math reference of output and input gradients)
    for shape in shapes:
        q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        grad = torch.randn(shape, device=device, dtype=torch.bfloat16)
        qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), tf32(False):
            ref = attention(qf, kf, vf)
            reference = (ref.detach(), *torch.autograd.grad(ref, (qf, kf, vf), grad.float()))
        cases.append((q, k, v, grad, reference))
        del qf, kf, vf, ref
    lines, best = [], ("default", math.inf)
    for backend in ("default", "cudnn", "flash", "efficient"):
        total_ms, worst = 0.0, 0.0
        priority = sdpa_priority(backend)
        try:
            for q, k, v, grad, reference in cases:
                def run(q=q, k=k, v=v, grad=grad, priority=priority):
                    with torch.nn.attention.sdpa_kernel(priority, set_priority=True) if priority else contextlib.nullcontext():
                        out = attention(q, k, v)
                    return out, *torch.autograd.grad(out, (q, k, v), grad)

                for a, b in zip(run(), reference, strict=True):
                    worst = max(worst, float((a.detach().float() - b).norm() / b.norm()))
                total_ms += timed(run, device, warmup=2, iters=5)[1]
        except RuntimeError as err:
            lines.append(f"  {backend:9s} failed: {str(err).splitlines()[0][:100]}")
            continue
        ok = worst <= 2e-2
        lines.append(f"  {backend:9s} {total_ms:7.2f} ms fwd+bwd, max rel. L2 error vs fp32 math {worst:.1e}"
                     f"{'' if ok else '  (rejected)'}")
        if ok and total_ms < best[1]:
            best = (backend, total_ms)
    return best[0], lines


# --- the two training-step structures ------------------------------------------------------------------


def upstream_step(model, batch, loss_fn, device, groups):
    """Upstream's trainer: autocast, GradScaler (also for bf16), unscale, per-group clip, scaler
    step, AdamW over all parameters, the loss read on the host every step (its meters)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)  # frozen ones too, as upstream
    scaler = torch.amp.GradScaler(device.type)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            losses = loss_fn(model(batch["images"]), batch)
        scaler.scale(losses["objective"]).backward()
        scaler.unscale_(optimizer)
        for _, max_norm, params in groups:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses["objective"].item()

    return step


def our_step(model, batch, loss_fn, device, groups, fused: bool, host_sync: bool):
    """`lora_train.train`'s step: forward_losses, backward, clip_gradients, AdamW (fused or not),
    metrics copied to the host and read one step later (or at once with `host_sync`)."""
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], OptimConfig(fused=fused), device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    pending = []

    def step():
        losses = forward_losses(model, batch, loss_fn, autocast)
        losses["objective"].backward()
        norms = clip_gradients(groups, device)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        pending.append(HostCopy(torch.cat([losses["objective"].detach().double()[None], norms.double()])))
        if host_sync or len(pending) > 1:
            pending.pop(0).read()

    return step


# --- models ------------------------------------------------------------------------------------------


def bench_config(args, **overrides):
    values = {
        "model.preset": "tiny" if args.tiny else "vggt1b", "model.checkpoint": None,
        "model.overrides.enable_point": False, "model.base_dtype": "fp32", "train.precision": "bf16",
        "lora.rank": RANK,
    }
    values.update(overrides)
    return load_config("default", values)


def load_upstream(path: str | None, tiny: bool):
    """(upstream VGGT class, its loss module or None, why not) from a checkout at `path`."""
    if path is None:
        return None, None, "no --upstream given"
    if tiny:
        return None, None, "--tiny: upstream VGGT has no tiny configuration"
    root = Path(path).expanduser().resolve()
    for entry in (root, root / "training"):
        sys.path.insert(0, str(entry))
    try:
        from vggt.models.vggt import VGGT as UpstreamVGGT
    except Exception as err:  # noqa: BLE001 - any import failure means: no upstream baseline
        return None, None, f"cannot import vggt from {root}: {type(err).__name__}: {err}"
    try:
        from loss import MultitaskLoss
    except Exception as err:  # noqa: BLE001
        print(f"upstream training/loss.py not importable ({type(err).__name__}: {err}); upstream uses our loss")
        MultitaskLoss = None
    return UpstreamVGGT, MultitaskLoss, ""


def upstream_loss(multitask_cls, config):
    """Upstream's objective with our strategy's weights, or ours when its loss is not importable."""
    if multitask_cls is None:
        return VGGTLoss(camera_weight=config.loss.camera_weight, depth_weight=config.loss.depth_weight)
    return multitask_cls(
        camera={"weight": config.loss.camera_weight, "loss_type": "l1"},
        depth={"weight": config.loss.depth_weight, "gradient_loss_fn": "grad", "valid_range": 0.98},
    )


# --- report ------------------------------------------------------------------------------------------


class Report:
    """Timed rows printed as they come, a markdown table at the end. A row that raises (an
    unsupported kernel, out of memory) prints its error and the run goes on."""

    def __init__(self, device, args, peak):
        self.device, self.args, self.peak, self.start = device, args, peak, time.perf_counter()
        self.table = []  # (section, label, ms, GiB, speedup, % peak)

    def header(self, title: str) -> None:
        print(f"\n{title}  [{time.perf_counter() - self.start:.0f} s]\n  {'variant':34s} {'ms':>9s} "
              f"{'speedup':>7s} {'peak GiB':>8s} {'TFLOP/s':>8s} {'% peak':>7s} {'1st s':>8s}", flush=True)

    def measure(self, section, label, make_fn, flops, baseline_ms=None, optional=True) -> float | None:
        """Time `make_fn()` (built here, so building counts against errors too); None if skipped/failed."""
        if optional and time.perf_counter() - self.start > self.args.budget_s:
            print(f"  {label:34s} skipped: time budget of {self.args.budget_s:.0f} s spent", flush=True)
            return None
        try:
            first_s, ms, gib = timed(make_fn(), self.device, self.args.warmup, self.args.iters)
        except Exception as err:  # noqa: BLE001 - report and go on: one GPU run must finish
            print(f"  {label:34s} FAILED: {type(err).__name__}: {first_line(err)}")
            free_memory()
            return None
        achieved = flops / (ms / 1000) / 1e12
        share = f"{100 * achieved / self.peak:.1f}%" if self.peak else "n/a"
        ratio = baseline_ms / ms if baseline_ms else None
        mem = f"{gib:.2f}" if gib is not None else "-"
        print(f"  {label:34s} {ms:9.1f} {f'{ratio:.2f}x' if ratio else '-':>7s} {mem:>8s} {achieved:8.3g} "
              f"{share:>7s} {first_s:8.1f}", flush=True)
        self.table.append((section, label, ms, mem, f"{ratio:.2f}x" if ratio else "-", share))
        return ms

    def markdown(self, baseline_name: str) -> None:
        print(f"\n| | variant | ms | vs {baseline_name} | peak GiB | % of dense bf16 peak |\n|---|---|---:|---:|---:|---:|")
        for section, label, ms, mem, ratio, share in self.table:
            print(f"| {section} | {label.strip()} | {ms:.1f} | {ratio} | {mem} | {share} |")


# --- main ----------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What every section shares."""

    args: argparse.Namespace
    device: torch.device
    report: Report
    batch: dict
    upstream_cls: type | None
    upstream_loss_cls: type | None
    base_state: dict | None = None  # our random base weights, for upstream
    flops: FlopCount | None = None
    attention: str = "default"

    @property
    def baseline_name(self) -> str:
        return "upstream" if self.upstream_cls is not None else "ours-as-upstream"

    def upstream_model(self) -> nn.Module:
        model = self.upstream_cls(enable_point=False, enable_track=False).to(self.device)
        model.load_state_dict(self.base_state, strict=True)
        return model


def bench_inference(setup: Setup) -> None:
    """fp32 reference (and FLOP count), output checks, SDPA choice, then the inference rows."""
    args, device, report, images = setup.args, setup.device, setup.report, setup.batch["images"]
    torch.manual_seed(0)
    model = build_model(bench_config(args), base_only=True, device=device).eval()
    if setup.upstream_cls is not None:
        setup.base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad(), tf32(False), count_flops(model) as setup.flops:
        reference = {k: v.float() for k, v in model(images).items() if k in OUTPUT_KEYS}
    print(f"analytic FLOPs: forward {fmt_flops(setup.flops.forward)}; training step " + ", ".join(
        f"{s} {fmt_flops(setup.flops.training_step(set(targets_for(model, s)), RANK))}" for s in STRATEGIES)
        + f" (the 3x-forward rule of full fine-tuning would say {fmt_flops(3 * setup.flops.forward)})")

    _, views, _, height, width = images.shape
    heads, head_dim = model.config.num_heads, model.config.embed_dim // model.config.num_heads
    tokens = (height // 14) * (width // 14) + 5
    setup.attention, lines = pick_attention_backend(
        device, [(views, heads, tokens, head_dim), (1, heads, views * tokens, head_dim)]
    )
    print("SDPA kernels at the frame and global attention shapes (bf16):\n" + "\n".join(lines)
          + f"\n  → ours uses attention_backend={setup.attention}")

    def infer(net):
        def run():
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                return net(images)
        return run

    def check(label, net):
        try:
            with tf32(False):
                errors = relative_errors(infer(net)(), reference)
            print(f"  {label}: rel. L2 error vs fp32 reference: {fmt_errors(errors)}")
        except Exception as err:  # noqa: BLE001
            print(f"  {label}: FAILED: {type(err).__name__}: {first_line(err)}")

    print("\noutputs under bf16 autocast vs the fp32 reference (TF32 off):")
    upstream = None
    if setup.upstream_cls is not None:
        upstream = setup.upstream_model().eval()
        with torch.no_grad(), tf32(False):
            print(f"  upstream fp32 vs ours fp32 (same weights): {fmt_errors(relative_errors(upstream(images), reference))}")
        check("upstream bf16", upstream)
    check("ours-as-upstream bf16", model)

    report.header(f"inference, S={views} {height}x{width} (ms per forward; speedup vs {setup.baseline_name})")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # upstream trains so
    forward, base_ms = setup.flops.forward, None
    if upstream is not None:
        base_ms = report.measure("inference", "upstream", lambda: infer(upstream), forward, optional=False)
        upstream = None
        free_memory()
    ms = report.measure("inference", "ours-as-upstream", lambda: infer(model), forward, base_ms, optional=False)
    base_ms = base_ms or ms
    model.set_attention_backend(setup.attention)
    report.measure("inference", f"+ sdpa {setup.attention}", lambda: infer(model), forward, base_ms)
    cast_frozen_base(model, torch.bfloat16)
    report.measure("inference", "+ bf16 base", lambda: infer(model), forward, base_ms)
    check("ours, all levers but compile", model)
    eager = infer(model)()  # TF32 as timed: checking the compiled model under other flags would recompile it
    compile_blocks(model)
    report.measure("inference", "+ compile = ours", lambda: infer(model), forward, base_ms, optional=False)
    try:
        print(f"  ours compiled vs ours eager: rel. L2 error {fmt_errors(relative_errors(infer(model)(), eager))}")
    except Exception as err:  # noqa: BLE001
        print(f"  ours compiled: FAILED: {type(err).__name__}: {first_line(err)}")
    print(f"  graphs compiled so far (all kinds of blocks, all sections): {counters['stats']['unique_graphs']}")


def bench_training(setup: Setup, strategy: str) -> None:
    """One strategy: the baseline, then ours lever by lever, then ours without checkpointing."""
    args, device, report, batch = setup.args, setup.device, setup.report, setup.batch
    preset = load_config(f"strategy_{strategy.lower()}")
    config = bench_config(args, **{
        "lora.strategy": strategy, "lora.alpha": preset.lora.alpha, "lora.dropout": preset.lora.dropout,
        "loss.camera_weight": preset.loss.camera_weight, "loss.depth_weight": preset.loss.depth_weight,
        "optim.clip_norms": preset.optim.clip_norms,
    })
    checkpointing = strategy != "A"  # upstream's frozen aggregator (A) is in eval mode: no checkpointing
    section, base_ms = f"train {strategy}", None
    report.header(f"training step, strategy {strategy} (ms per optimizer step; speedup vs {setup.baseline_name}; "
                  f"gradient checkpointing {'on' if checkpointing else 'off'} as upstream)")

    upstream_wrapped = None
    if setup.upstream_cls is not None:
        upstream = apply_lora(setup.upstream_model(), config.lora).train()
        if strategy == "A":
            upstream.get_base_model().aggregator.eval()  # upstream's freeze puts it in eval mode
        up_loss, up_groups = upstream_loss(setup.upstream_loss_cls, config), clip_groups(upstream, config.optim.clip_norms)
        upstream_wrapped = tuple(upstream.lora_summary.wrapped)
        base_ms = report.measure(section, "upstream", lambda: upstream_step(upstream, batch, up_loss, device, up_groups),
                                 setup.flops.training_step(set(upstream_wrapped), RANK), optional=False)
        upstream = up_groups = None
        free_memory()

    torch.manual_seed(0)
    model = build_model(config, device=device).train()
    vggt = model.get_base_model()
    vggt.set_gradient_checkpointing(checkpointing)
    if upstream_wrapped is not None and tuple(model.lora_summary.wrapped) != upstream_wrapped:
        raise SystemExit(f"strategy {strategy}: PEFT wrapped different layers in upstream and ours")
    flops = setup.flops.training_step(set(model.lora_summary.wrapped), RANK)
    groups = clip_groups(model, config.optim.clip_norms)
    loss_fn = VGGTLoss(camera_weight=config.loss.camera_weight, depth_weight=config.loss.depth_weight)

    def ours(fused, host_sync=False):
        return lambda: our_step(model, batch, loss_fn, device, groups, fused, host_sync)

    ms = report.measure(section, "ours-as-upstream", lambda: upstream_step(model, batch, loss_fn, device, groups),
                        flops, base_ms, optional=False)
    base_ms = base_ms or ms
    report.measure(section, "+ loop (no GradScaler, no sync)", ours(False), flops, base_ms)
    report.measure(section, "  (same, host sync every step)", ours(False, True), flops, base_ms)
    report.measure(section, "+ fused AdamW", ours(True), flops, base_ms)
    vggt.set_attention_backend(setup.attention)
    report.measure(section, f"+ sdpa {setup.attention}", ours(True), flops, base_ms)
    cast_frozen_base(model, torch.bfloat16)
    report.measure(section, "+ bf16 base", ours(True), flops, base_ms)
    compile_blocks(model)
    report.measure(section, "+ compile = ours", ours(True), flops, base_ms, optional=False)
    print(f"  graphs compiled so far (all kinds of blocks, all sections): {counters['stats']['unique_graphs']}")
    if checkpointing:
        vggt.set_gradient_checkpointing(False)
        report.measure(section, "ours, no checkpointing", ours(True), flops, base_ms)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", default=None, help="checkout of facebookresearch/vggt (imported by path)")
    parser.add_argument("--tiny", action="store_true", help="tiny model (default without CUDA)")
    parser.add_argument("--strategies", default="A,B,C")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls, the first (compiling) one included")
    parser.add_argument("--iters", type=int, default=3, help="timed calls")
    parser.add_argument("--budget-s", type=float, default=200.0, help="optional rows are skipped after this")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.tiny = args.tiny or device.type == "cpu"
    views, height, width = (4, 56, 84) if args.tiny else (8, 350, 518)
    torch.backends.cudnn.benchmark = False  # upstream's default

    upstream_cls, upstream_loss_cls, why_not = load_upstream(args.upstream, args.tiny)
    setup = Setup(args, device, Report(device, args, peak_tflops(device)),
                  normalize_gt(random_batch(views, height, width, device)), upstream_cls, upstream_loss_cls)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__} on {gpu}; {'tiny' if args.tiny else 'VGGT-1B'} (camera + depth heads), "
          f"S={views} {height}x{width}, bf16 autocast, LoRA r={RANK}, {args.warmup} warm-up + {args.iters} timed calls")
    if upstream_cls is not None:
        print(f"baseline: upstream VGGT from {args.upstream}")
    else:
        print(f"baseline: OUR model in the upstream-equivalent setup ({why_not})")
    print(f"dense bf16 peak: {setup.report.peak or 'n/a'} TFLOPS; upstream's published timings: none in "
          "docs/reference/vggt.md, none printed")

    bench_inference(setup)
    free_memory()
    for strategy in args.strategies.split(","):
        bench_training(setup, strategy)
        free_memory()
    setup.report.markdown(setup.baseline_name)
    print(f"\ntotal {time.perf_counter() - setup.report.start:.0f} s")


def first_line(err: Exception) -> str:
    return str(err).splitlines()[0][:120] if str(err) else ""


def targets_for(model: nn.Module, strategy: str) -> list[str]:
    return select_targets(model, LoraSettings(strategy=strategy, rank=RANK))[0]


if __name__ == "__main__":
    main()
