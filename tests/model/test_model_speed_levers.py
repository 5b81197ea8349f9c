"""Speed levers of the model: frozen base in bf16, preferred SDPA kernel, regional compilation,
channels-last DPT head. Each must leave the numbers as they were (or within compile tolerance)."""

import pytest
import torch
from torch._dynamo.utils import counters

from lora_train.builders import build_model
from lora_train.config import load_config
from lora_train.errors import UserError
from lora_train.model import VGGT, VGGTConfig
from lora_train.model.blocks import Attention


def tiny_config(**overrides):
    values = {"model.checkpoint": None, "model.overrides.enable_point": False, "lora.strategy": "C", "lora.rank": 4}
    values.update(overrides)
    return load_config("default", values)


def build(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_config(**overrides)).train()


def objective(out: dict) -> torch.Tensor:
    return sum(p.square().mean() for p in out["pose_enc_list"]) + out["depth"].mean() + out["depth_conf"].log().mean()


def forward_backward(model, images, autocast: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(images)
    objective(out).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in out.items() if torch.is_tensor(v)}, grads


def test_bf16_base_is_frozen_aggregator_only_and_changes_nothing_under_autocast():
    fp32 = build(**{"model.base_dtype": "fp32", "train.precision": "bf16"})
    bf16 = build(**{"model.base_dtype": "bf16", "train.precision": "bf16"})

    dtypes = {n: p.dtype for n, p in bf16.named_parameters()}
    cast = {n for n, d in dtypes.items() if d == torch.bfloat16}
    assert cast and all(".aggregator." in n and "lora_" not in n for n in cast)
    assert all(not bf16.get_parameter(n).requires_grad for n in cast)
    assert all(dtypes[n] == torch.float32 for n, p in bf16.named_parameters() if p.requires_grad)
    frozen_linears = [
        n for n, m in bf16.named_modules()
        if isinstance(m, torch.nn.Linear) and ".aggregator." in n and "lora_" not in n
    ]
    assert frozen_linears and all(bf16.get_submodule(n).weight.dtype == torch.bfloat16 for n in frozen_linears)
    assert all(d == torch.float32 for n, d in dtypes.items() if "norm" in n or "gamma" in n or "head." in n)

    def aggregator_bytes(model):
        return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".aggregator." in n)

    assert aggregator_bytes(bf16) < 0.6 * aggregator_bytes(fp32)  # the weight matrices are nearly all of it

    # Under bf16 autocast the aggregator's Linear/Conv layers compute in bf16 either way: the
    # bf16 copies give the same outputs and adapter gradients bit for bit.
    images = torch.rand(1, 2, 3, 28, 42)
    out_a, grads_a = forward_backward(fp32, images, autocast=True)
    out_b, grads_b = forward_backward(bf16, images, autocast=True)
    assert out_a.keys() == out_b.keys()
    for key in out_a:
        assert torch.equal(out_a[key], out_b[key]), key
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        assert grads_b[name].dtype == torch.float32
        assert torch.equal(grads_a[name], grads_b[name]), name


def test_base_dtype_resolves_to_bf16_only_under_bf16_autocast():
    from lora_train.builders import resolve_base_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cases = [
        ("auto", "auto", cpu, torch.float32),
        ("auto", "bf16", cpu, torch.float32),  # auto keeps fp32 on CPU even with autocast
        ("bf16", "bf16", cpu, torch.bfloat16),
        ("bf16", "auto", cpu, torch.float32),  # no autocast on CPU by default: bf16 cannot apply
        ("auto", "auto", cuda, torch.bfloat16),
        ("fp32", "auto", cuda, torch.float32),
    ]
    for base_dtype, precision, device, expected in cases:
        config = tiny_config(**{"model.base_dtype": base_dtype, "train.precision": precision})
        assert resolve_base_dtype(config, device) == expected, (base_dtype, precision, device)
    with pytest.raises(UserError, match="model.base_dtype"):
        tiny_config(**{"model.base_dtype": "bf16", "train.precision": "fp32"})


def test_attention_backend_reaches_every_attention_layer_and_leaves_cpu_results_alone():
    torch.manual_seed(0)
    model = VGGT(VGGTConfig.tiny(enable_point=False)).eval()
    images = torch.rand(1, 2, 3, 28, 42)
    with torch.no_grad():
        before = model(images)["depth"]
    model.set_attention_backend("cudnn")
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    assert layers and all(m.sdpa_backends[0] == torch.nn.attention.SDPBackend.CUDNN_ATTENTION for m in layers)
    assert all(torch.nn.attention.SDPBackend.MATH in m.sdpa_backends for m in layers)  # fallbacks kept
    with torch.no_grad():
        assert torch.equal(model(images)["depth"], before)
    flash = build(**{"model.attention_backend": "flash"}).get_base_model().aggregator.frame_blocks[0].attn
    assert flash.sdpa_backends[0] == torch.nn.attention.SDPBackend.FLASH_ATTENTION
    with pytest.raises(ValueError, match="fastest"):
        model.set_attention_backend("fastest")
    with pytest.raises(UserError, match="attention_backend"):
        tiny_config(**{"model.attention_backend": "fastest"})


def test_dpt_head_convolutions_already_run_channels_last():
    """The token grid enters the DPT head as an NHWC view, and every conv, interpolation and add
    keeps that layout: the head is channels-last without a switch (what cuDNN's fast NHWC
    kernels want on a GPU)."""
    torch.manual_seed(0)
    model = VGGT(VGGTConfig.tiny(enable_point=False)).eval()
    layouts = []

    def record(module, inputs, output):
        layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last))

    convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    for module in model.depth_head.modules():
        if isinstance(module, convs):
            module.register_forward_hook(record)
    with torch.no_grad():
        model(torch.rand(1, 2, 3, 56, 70))
    assert len(layouts) == sum(isinstance(m, convs) for m in model.depth_head.modules())
    assert all(layouts)


@pytest.mark.slow
def test_compiled_blocks_match_eager_and_compile_once_per_block_kind():
    images = torch.rand(1, 2, 3, 28, 42)
    eager = build(**{"lora.dropout": 0.0})
    compiled = build(**{"lora.dropout": 0.0, "model.compile": True})
    out_e, grads_e = forward_backward(eager, images, autocast=False)
    counters.clear()
    out_c, grads_c = forward_backward(compiled, images, autocast=False)
    for key in out_e:
        torch.testing.assert_close(out_c[key], out_e[key], atol=1e-5, rtol=1e-4, msg=key)
    assert grads_e.keys() == grads_c.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], atol=1e-5, rtol=1e-3, msg=name)

    # 4+4 aggregator blocks and 2 DINO blocks, one graph per kind: DINO (frozen), frame block
    # without and with an input gradient (block 0 / the others), global block.
    blocks = [m for n, m in compiled.named_modules() if type(m).__name__ == "Block" and ".aggregator." in n]
    assert len(blocks) == 10
    assert counters["stats"]["unique_graphs"] == 4

    # A new model of the same kind (the next trial in a reused process) compiles nothing new.
    again = build(seed=1, **{"lora.dropout": 0.0, "model.compile": True})
    forward_backward(again, images, autocast=False)
    assert counters["stats"]["unique_graphs"] == 4
