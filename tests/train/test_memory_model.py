"""The peak-memory model (`lora_train.memory`): calibration against the H200 peaks, scaling, fractions."""

import pytest

from lora_train.config import load_config
from lora_train.memory import GIB, estimate_peak, gpu_fraction, predict_peak_gib

# torch.cuda.max_memory_allocated of one training step on an H200 (README): VGGT-1B camera + depth,
# 8 views of 350 x 518, rank 16, bf16 autocast, fp32 base; (strategy, gradient checkpointing) → GiB.
H200_PEAKS = {("A", False): 10.1, ("A", True): 10.1, ("B", False): 19.4, ("B", True): 10.9,
              ("C", False): 28.8, ("C", True): 11.7}
H200_GIB = 139.8  # torch.cuda.get_device_properties(0).total_memory of an H200


def vggt1b(strategy="B", checkpointing=False, views=8, width=518, **overrides):
    return load_config("default", {
        "model.preset": "vggt1b", "model.checkpoint": None, "model.base_dtype": "fp32", "lora.strategy": strategy,
        "lora.rank": 16, "data.num_views": views, "data.width": width,
        "model.gradient_checkpointing": checkpointing, **overrides})


def activations(estimate) -> float:
    return estimate.outputs + estimate.heads + estimate.blocks


@pytest.mark.parametrize("strategy,checkpointing", sorted(H200_PEAKS))
def test_predictions_are_within_10_percent_of_the_h200_peaks(strategy, checkpointing):
    measured = H200_PEAKS[(strategy, checkpointing)]
    estimate = estimate_peak(vggt1b(strategy, checkpointing), height=350)
    print(f"{strategy} checkpointing={checkpointing}: predicted {estimate}, measured {measured} GiB")
    assert estimate.gib == pytest.approx(measured, rel=0.10)


def test_weights_and_optimizer_are_exact_counts():
    estimate = estimate_peak(vggt1b("C"), height=350)
    trainable = 16_336_192  # strategy C at r = 16 (lora_train.lora)
    frozen = 1_157_941_492  # VGGT-1B, camera + depth heads
    assert estimate.weights == 4 * (frozen + trainable)
    assert estimate.optimizer == 12 * trainable


def test_activations_scale_linearly_with_views_and_micro_batch_not_with_accumulation():
    four, eight, sixteen = (estimate_peak(vggt1b(views=views)) for views in (4, 8, 16))
    assert sixteen.total - eight.total == pytest.approx(2 * (eight.total - four.total), rel=1e-9)  # linear
    assert 1.9 < activations(sixteen) / activations(eight) <= 2.0  # the weight copies do not grow
    assert sixteen.weights == eight.weights
    batch_two = estimate_peak(vggt1b(views=8, **{"data.batch_size": 2}))
    assert activations(batch_two) == pytest.approx(activations(sixteen), rel=1e-9)
    accumulating = estimate_peak(vggt1b(views=8, **{"optim.grad_accum_steps": 4}))
    assert accumulating.total == eight.total


def test_activations_scale_with_pixels():
    bf16_base = {"model.base_dtype": "bf16"}  # no bf16 weight copies: activations alone
    small = estimate_peak(vggt1b(width=518, **bf16_base), height=350)
    large = estimate_peak(vggt1b(width=1036, **bf16_base), height=700)
    assert 3.95 < activations(large) / activations(small) <= 4.0  # 4x pixels; tokens 4x minus the 5 special ones
    assert predict_peak_gib(vggt1b(width=518)) < predict_peak_gib(vggt1b(width=1036))
    assert estimate_peak(vggt1b(width=518)) == estimate_peak(vggt1b(width=518), height=350)  # ETH3D's 3:2


def test_checkpointing_helps_b_and_c_only_and_the_frozen_bf16_base_saves_weights():
    for strategy in ("B", "C"):
        assert predict_peak_gib(vggt1b(strategy, True)) < predict_peak_gib(vggt1b(strategy)) / 1.5
    assert predict_peak_gib(vggt1b("A", True)) == predict_peak_gib(vggt1b("A"))
    fp32_base, bf16_base = estimate_peak(vggt1b("B")), estimate_peak(vggt1b("B", **{"model.base_dtype": "bf16"}))
    assert 1.5 * GIB < fp32_base.weights - bf16_base.weights < 2.0 * GIB  # ~0.9B aggregator weights, 2 bytes less
    assert bf16_base.blocks < fp32_base.blocks  # no bf16 copies of frozen weights on the backward path


def test_heads_on_the_backward_path_count():
    without, with_point = estimate_peak(vggt1b("B")), estimate_peak(vggt1b("B", **{"model.overrides.enable_point": True}))
    assert with_point.heads == pytest.approx(2 * without.heads)
    a_without, a_with_point = estimate_peak(vggt1b("A")), estimate_peak(vggt1b("A", **{"model.overrides.enable_point": True}))
    assert a_with_point.heads == a_without.heads  # A's frozen aggregator: no gradient reaches the point head


def test_counts_from_the_built_model_equal_the_meta_counts():
    from lora_train.builders import build_model

    config = load_config("tiny_demo", {"model.checkpoint": None, "lora.strategy": "C"})
    model = build_model(config, device="cpu")
    assert estimate_peak(config, device_type="cpu", model=model) == estimate_peak(config, device_type="cpu")


def test_gpu_fractions_round_up_to_eighths_and_stop_at_one_gpu():
    assert gpu_fraction(10.1, H200_GIB) == 0.125
    assert gpu_fraction(28.8, H200_GIB) == 0.25  # 28.8 x 1.1 + 1 = 32.7 GiB > 1/8 of 139.8
    assert gpu_fraction(0.01, H200_GIB) == 0.125
    assert gpu_fraction(28.8, 40.0) == 0.875  # an A100-40GB: 32.7 GiB is 7/8 of it
    assert gpu_fraction(28.8, 32.0) == 1.0  # more than the GPU: the whole GPU
    assert gpu_fraction(300.0, H200_GIB) == 1.0
    assert gpu_fraction(10.1, 24.0) == 0.625  # 12.1 GiB of 24: 5/8
