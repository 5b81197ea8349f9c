"""Training-time behaviour: gradient checkpointing is exact, heads stay fp32 under bf16 autocast."""

import torch

from lora_train.model import VGGT, VGGTConfig


def scalar_objective(out: dict) -> torch.Tensor:
    return (
        sum(p.square().mean() for p in out["pose_enc_list"])
        + out["depth"].mean()
        + out["depth_conf"].log().mean()
        + out["world_points"].abs().mean()
    )


def gradients(model: VGGT, images: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    scalar_objective(model(images)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = VGGT(VGGTConfig.tiny()).train()
    images = torch.rand(1, 2, 3, 28, 42)
    plain = gradients(model, images)

    model.set_gradient_checkpointing(True)
    calls = []
    hooks = [b.register_forward_pre_hook(lambda *_: calls.append(1)) for b in model.aggregator.frame_blocks]
    checkpointed = gradients(model, images)
    for hook in hooks:
        hook.remove()
    assert len(calls) == 2 * len(model.aggregator.frame_blocks)  # forward + recomputation in backward

    assert set(plain) == set(checkpointed)
    assert len(plain) == sum(p.requires_grad for p in model.parameters())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_gradient_checkpointing_is_off_in_eval_and_without_grad():
    model = VGGT(VGGTConfig.tiny(gradient_checkpointing=True))
    calls = []
    model.aggregator.frame_blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    images = torch.rand(1, 2, 3, 28, 28)
    scalar_objective(model.eval()(images)).backward()
    with torch.no_grad():
        model.train()(images)
    assert len(calls) == 2  # one call each, no recomputation
    scalar_objective(model.train()(images)).backward()
    assert len(calls) == 4  # training with grad: forward + recomputation


def test_camera_head_detaches_between_iterations():
    model = VGGT(VGGTConfig.tiny(enable_depth=False, enable_point=False)).train()
    model(torch.rand(1, 2, 3, 28, 28))["pose_enc_list"][-1].sum().backward()
    # Only the last iteration is back-propagated, and it starts from the detached previous
    # prediction: the empty pose token (used by iteration 0 only) gets no gradient.
    grad = model.camera_head.empty_pose_tokens.grad
    assert grad is None or torch.count_nonzero(grad) == 0


def test_bf16_autocast_keeps_heads_fp32():
    model = VGGT(VGGTConfig.tiny()).eval()
    images = torch.rand(1, 2, 3, 28, 42)
    layers = {
        "aggregator": model.aggregator.frame_blocks[1].attn.qkv,
        "camera": model.camera_head.trunk[0].attn.qkv,
        "depth": model.depth_head.projects[0],
        "point": model.point_head.scratch.output_conv1,
    }
    dtypes = {}

    def record(name):
        def hook(_module, _inputs, output):
            dtypes.setdefault(name, output.dtype)

        return hook

    for name, layer in layers.items():
        layer.register_forward_hook(record(name))
    with torch.no_grad():
        reference = model(images)
        dtypes.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(images)
    assert dtypes == {"aggregator": torch.bfloat16, "camera": torch.float32, "depth": torch.float32, "point": torch.float32}
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert out[key].dtype == torch.float32, key
        assert torch.isfinite(out[key]).all(), key
    # A bf16 aggregator changes the outputs only a little.
    torch.testing.assert_close(out["depth"], reference["depth"], rtol=0.1, atol=0.05)
