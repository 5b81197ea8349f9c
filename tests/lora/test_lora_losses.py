"""Losses and GT normalisation against the upstream-generated fixture (main case and case2)."""

import pytest
import torch
from safetensors.torch import load_file

from lora_train.errors import UserError
from lora_train.losses import LOSS_KEYS, VGGTLoss, filter_by_quantile, normalize_gt
from lora_train.model.pose_encoding import extri_intri_to_pose_encoding

GEOMETRY_KEYS = ("extrinsics", "cam_points", "world_points", "depths")
CASES = {"main": ("", "norm.in.point_masks"), "case2": ("case2.", "case2.point_masks")}


@pytest.fixture(scope="module")
def reference(vggt_fixtures):
    return load_file(str(vggt_fixtures / "vggt_loss_reference.safetensors"))


def _raw_batch(ref, mask_key):
    batch = {"images": ref["batch.images"], "intrinsics": ref["batch.intrinsics"], "point_masks": ref[mask_key]}
    for key in GEOMETRY_KEYS:
        batch[key] = ref[f"norm.in.{key}"].clone()
    return batch


def _predictions(ref, requires_grad=False):
    preds = {
        "pose_enc_list": [ref[f"pred.pose_enc_list.{i}"].clone().requires_grad_(requires_grad) for i in range(4)],
        "depth": ref["pred.depth"].clone().requires_grad_(requires_grad),
        "depth_conf": ref["pred.depth_conf"].clone().requires_grad_(requires_grad),
    }
    return preds


@pytest.mark.parametrize("case", sorted(CASES))
def test_normalize_gt_matches_fixture(reference, case):
    prefix, mask_key = CASES[case]
    raw = _raw_batch(reference, mask_key)
    before = {k: v.clone() for k, v in raw.items()}
    normalized = normalize_gt(raw)
    for key in GEOMETRY_KEYS:
        expected = reference[f"{prefix}norm.out.{key}"]
        assert normalized[key].shape == expected.shape
        torch.testing.assert_close(normalized[key], expected, atol=1e-5, rtol=0, msg=f"{case} {key}")
    for key, value in before.items():  # the input batch is not modified
        assert torch.equal(raw[key], value)
    # frame 0 becomes the identity camera
    eye = torch.eye(3, 4).expand(2, 3, 4)
    torch.testing.assert_close(normalized["extrinsics"][:, 0], eye, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_matches_fixture(reference, case):
    prefix, mask_key = CASES[case]
    batch = normalize_gt(_raw_batch(reference, mask_key))
    gt_pose_enc = extri_intri_to_pose_encoding(batch["extrinsics"], batch["intrinsics"], batch["images"].shape[-2:])
    torch.testing.assert_close(gt_pose_enc, reference[f"{prefix}loss.gt_pose_enc"], atol=1e-5, rtol=0)

    losses = VGGTLoss()(_predictions(reference), batch)
    assert set(losses) == set(LOSS_KEYS)
    for key in LOSS_KEYS:
        assert losses[key].dim() == 0
        torch.testing.assert_close(losses[key], reference[f"{prefix}loss.{key}"], atol=1e-5, rtol=0, msg=f"{case} {key}")


def test_gradients_reach_every_prediction(reference):
    batch = normalize_gt(_raw_batch(reference, "norm.in.point_masks"))
    preds = _predictions(reference, requires_grad=True)
    VGGTLoss()(preds, batch)["objective"].backward()
    for name, tensor in [("depth", preds["depth"]), ("depth_conf", preds["depth_conf"])] + [
        (f"pose_enc_list.{i}", t) for i, t in enumerate(preds["pose_enc_list"])
    ]:
        assert tensor.grad is not None, name
        assert torch.isfinite(tensor.grad).all(), name
        assert tensor.grad.abs().sum() > 0, name


def test_camera_term_skipped_without_pose_or_weight(reference):
    batch = normalize_gt(_raw_batch(reference, "norm.in.point_masks"))
    full = VGGTLoss()(_predictions(reference), batch)
    preds = _predictions(reference)
    del preds["pose_enc_list"]
    for losses in (VGGTLoss()(preds, batch), VGGTLoss(camera_weight=0.0)(_predictions(reference), batch)):
        for key in ("loss_camera", "loss_T", "loss_R", "loss_FL"):
            assert losses[key].item() == 0.0
        depth_sum = losses["loss_conf_depth"] + losses["loss_reg_depth"] + losses["loss_grad_depth"]
        torch.testing.assert_close(losses["objective"], depth_sum)
        torch.testing.assert_close(losses["loss_grad_depth"], full["loss_grad_depth"])


def test_depth_terms_zero_below_100_valid_pixels(reference):
    batch = normalize_gt(_raw_batch(reference, "norm.in.point_masks"))
    mask = torch.zeros_like(batch["point_masks"])
    mask.view(-1)[:99] = True
    batch["point_masks"] = mask
    preds = _predictions(reference, requires_grad=True)
    losses = VGGTLoss()(preds, batch)
    for key in ("loss_conf_depth", "loss_reg_depth", "loss_grad_depth", "loss_camera"):
        assert losses[key].item() == 0.0
    losses["objective"].backward()  # still part of the graph (DDP needs every output used)
    assert preds["depth"].grad is not None and preds["depth"].grad.abs().sum() == 0


def test_quantile_filter_rule():
    small = torch.arange(1000, dtype=torch.float32) + 500.0  # <= 1000 elements: untouched, not clamped
    assert torch.equal(filter_by_quantile(small, 0.98), small)
    values = torch.arange(2000, dtype=torch.float32) / 10.0  # 0.0 .. 199.9, half above the clamp
    kept = filter_by_quantile(values, 0.98)
    # after the clamp at 100 the threshold is 100 and exactly 1000 values lie below it: not more
    # than min_elements, so everything (clamped) is kept
    assert kept.numel() == 2000 and kept.max().item() == 100.0
    values = torch.randperm(5000).float() / 100.0  # all below the clamp
    kept = filter_by_quantile(values, 0.98)
    k = round(0.98 * 4999) + 1  # threshold is the k-th smallest value, kept strictly below it
    assert kept.numel() == k - 1
    torch.testing.assert_close(kept.max(), torch.tensor((k - 2) / 100.0))


def test_bad_gradient_loss_option():
    with pytest.raises(UserError, match="gradient_loss"):
        VGGTLoss(gradient_loss="normal")


def test_depth_term_skipped_without_depth_or_weight(reference):
    batch = normalize_gt(_raw_batch(reference, "norm.in.point_masks"))
    expected = reference["loss.loss_camera"]
    preds = _predictions(reference)
    del preds["depth"], preds["depth_conf"]
    for losses in (VGGTLoss()(preds, batch), VGGTLoss(depth_weight=0.0)(_predictions(reference), batch)):
        assert losses["loss_conf_depth"].item() == losses["loss_grad_depth"].item() == 0.0
        torch.testing.assert_close(losses["loss_camera"], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(losses["objective"], 5.0 * expected, atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="nothing to compute"):
        VGGTLoss(camera_weight=0.0)(preds, batch)
