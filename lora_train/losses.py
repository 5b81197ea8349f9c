"""Ground-truth normalisation and the VGGT training loss, numerically equal to upstream training.

Upstream VGGT (`training/train_utils/normalization.py`, `training/loss.py`) normalises every batch
to the first camera's frame and to unit mean point distance, then trains with

    objective = camera_weight * loss_camera + depth_weight * (loss_conf_depth + loss_reg_depth + loss_grad_depth)

- camera: L1 on the 9-d pose encodings of all 4 refinement stages, stage i weighted by
  gamma^(n_stages-1-i), summed and divided by n_stages; only batch elements whose first frame has
  more than 100 valid pixels count; loss_camera = T + R + 0.5 * FL (weights configurable).
- depth: per valid pixel r = |d_pred - d_gt|; loss_reg = r, loss_conf = gamma * r * c - alpha * log(c);
  both clamped to 100, filtered to the lower 98 % and averaged; plus a multi-scale gradient loss on
  the masked residual at strides 1, 2, 4, 8. Batches with fewer than 100 valid pixels are skipped.
"""

import torch

from lora_train.errors import UserError
from lora_train.model.pose_encoding import extri_intri_to_pose_encoding

HARD_MAX = 100.0
MIN_VALID_DEPTH_PIXELS = 100
MIN_VALID_FRAME0_PIXELS = 100
QUANTILE_MIN_ELEMENTS = 1000
GRADIENT_LOSS_SCALES = 4
LOSS_KEYS = (
    "objective",
    "loss_camera",
    "loss_T",
    "loss_R",
    "loss_FL",
    "loss_conf_depth",
    "loss_reg_depth",
    "loss_grad_depth",
)


def closed_form_inverse_se3(transforms: torch.Tensor) -> torch.Tensor:
    """Invert rigid transforms `[..., 3 or 4, 4]` → `[..., 4, 4]` as `[R^T | -R^T t]`."""
    rotation = transforms[..., :3, :3]
    translation = transforms[..., :3, 3:]
    rotation_t = rotation.transpose(-1, -2)
    inverse = torch.zeros(transforms.shape[:-2] + (4, 4), dtype=transforms.dtype, device=transforms.device)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3:] = -torch.matmul(rotation_t, translation)
    inverse[..., 3, 3] = 1.0
    return inverse


def _to_homogeneous(extrinsics: torch.Tensor) -> torch.Tensor:
    """`[..., 3, 4]` → `[..., 4, 4]` with last row (0, 0, 0, 1)."""
    if extrinsics.shape[-2] == 4:
        return extrinsics
    bottom = torch.zeros(extrinsics.shape[:-2] + (1, 4), dtype=extrinsics.dtype, device=extrinsics.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([extrinsics, bottom], dim=-2)


def normalize_gt(batch: dict) -> dict:
    """First-frame normalisation of a ground-truth batch (upstream `normalize_camera_extrinsics_and_points_batch`).

    1. Every extrinsic becomes relative to frame 0: `E_i ← E_i · E_0⁻¹` (so `E_0 = I`).
    2. World points move into the frame-0 camera: `X ← X · R_0ᵀ + t_0`.
    3. `avg_scale[b]` = mean distance of the valid points from camera 0, i.e.
       `Σ‖X‖·mask / (Σmask + 1e-3)` over all frames and pixels of batch element b, clamped to
       [1e-6, 1e6].
    4. World points, extrinsic translations, depths and cam points are divided by `avg_scale`.

    Args:
        batch: collated batch with `extrinsics [B,S,3,4]` camera-from-world, `world_points
            [B,S,H,W,3]`, `cam_points [B,S,H,W,3]`, `depths [B,S,H,W]`, `point_masks [B,S,H,W]` bool;
            other keys are passed through unchanged.

    Returns:
        A new dict (the input is not modified) with the four geometric keys normalised and
        `extrinsics` of shape `[B,S,3,4]`.
    """
    missing = [k for k in ("extrinsics", "world_points", "cam_points", "depths", "point_masks") if k not in batch]
    if missing:
        raise UserError(f"normalize_gt: batch lacks key(s) {', '.join(missing)}")
    extrinsics = batch["extrinsics"]
    world_points = batch["world_points"]
    point_masks = batch["point_masks"]

    extrinsics_h = _to_homogeneous(extrinsics)
    first_inverse = closed_form_inverse_se3(extrinsics_h[:, 0])
    new_extrinsics = torch.matmul(extrinsics_h, first_inverse.unsqueeze(1))

    rotation0 = extrinsics_h[:, 0, :3, :3]
    translation0 = extrinsics_h[:, 0, :3, 3]
    new_world_points = torch.matmul(world_points, rotation0.transpose(-1, -2)[:, None, None]) + translation0[
        :, None, None, None
    ]

    distance = new_world_points.norm(dim=-1)
    distance_sum = (distance * point_masks).sum(dim=(1, 2, 3))
    valid_count = point_masks.sum(dim=(1, 2, 3))
    avg_scale = (distance_sum / (valid_count + 1e-3)).clamp(min=1e-6, max=1e6)

    new_extrinsics[:, :, :3, 3] = new_extrinsics[:, :, :3, 3] / avg_scale.view(-1, 1, 1)
    out = dict(batch)
    out["extrinsics"] = new_extrinsics[:, :, :3]
    out["world_points"] = new_world_points / avg_scale.view(-1, 1, 1, 1, 1)
    out["cam_points"] = batch["cam_points"] / avg_scale.view(-1, 1, 1, 1, 1)
    out["depths"] = batch["depths"] / avg_scale.view(-1, 1, 1, 1)
    return out


def fix_non_finite(values: torch.Tensor, hard_max: float = HARD_MAX) -> torch.Tensor:
    """Replace NaN/inf by 0, then clamp to [-hard_max, hard_max] (upstream `check_and_fix_inf_nan`)."""
    values = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
    return values.clamp(min=-hard_max, max=hard_max)


def filter_by_quantile(
    losses: torch.Tensor, valid_range: float, min_elements: int = QUANTILE_MIN_ELEMENTS
) -> torch.Tensor:
    """Drop the top `1 - valid_range` share of per-pixel losses `[N]` (upstream `filter_by_quantile`).

    Only when N > `min_elements`: clamp to `HARD_MAX`, take the threshold as the k-th smallest
    value with k = round(valid_range·(N−1)) + 1 (nearest-rank quantile), keep values strictly
    below it (and below `HARD_MAX`), and fall back to all values if no more than `min_elements`
    would remain.
    """
    if losses.numel() <= min_elements:
        return losses
    losses = losses.clamp(max=HARD_MAX)
    k = int(round(valid_range * (losses.numel() - 1))) + 1
    threshold = min(losses.detach().flatten().kthvalue(k).values.item(), HARD_MAX)
    keep = losses < threshold
    if keep.sum() > min_elements:
        return losses[keep]
    return losses


def _gradient_loss_single_scale(residual: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 of horizontal and vertical differences of the masked residual.

    Args:
        residual: `[N, H, W]` prediction − target.
        mask: `[N, H, W]` float, 1 for valid pixels.

    Returns:
        0-d tensor: Σ|∇(mask·residual)| over neighbour pairs where both pixels are valid (each
        difference clamped to `HARD_MAX`), divided by the number of valid pixels.
    """
    masked = residual * mask
    grad_x = (masked[:, :, 1:] - masked[:, :, :-1]).abs() * (mask[:, :, 1:] * mask[:, :, :-1])
    grad_y = (masked[:, 1:, :] - masked[:, :-1, :]).abs() * (mask[:, 1:, :] * mask[:, :-1, :])
    total = grad_x.clamp(max=HARD_MAX).sum() + grad_y.clamp(max=HARD_MAX).sum()
    divisor = mask.sum()
    if divisor == 0:
        return residual.sum() * 0.0
    return total / divisor


def multi_scale_gradient_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, scales: int = GRADIENT_LOSS_SCALES
) -> torch.Tensor:
    """Gradient loss averaged over strides 1, 2, 4, … (`scales` of them). All inputs `[N, H, W]`."""
    residual = pred - target
    mask = mask.to(residual.dtype)
    total = 0.0
    for scale in range(scales):
        step = 2**scale
        total = total + _gradient_loss_single_scale(residual[:, ::step, ::step], mask[:, ::step, ::step])
    return total / scales


def camera_loss(
    pose_enc_list: list[torch.Tensor],
    gt_pose_enc: torch.Tensor,
    point_masks: torch.Tensor,
    gamma: float = 0.6,
    weight_trans: float = 1.0,
    weight_rot: float = 1.0,
    weight_focal: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Multi-stage L1 camera loss (upstream `compute_camera_loss`, `loss_type="l1"`).

    Args:
        pose_enc_list: predicted encodings per refinement stage, each `[B, S, 9]`.
        gt_pose_enc: `[B, S, 9]` encoding of the normalised GT cameras.
        point_masks: `[B, S, H, W]`; batch element b counts only if its frame 0 has more than 100
            valid pixels.

    Returns:
        0-d tensors `loss_camera` (= weight_trans·T + weight_rot·R + weight_focal·FL), `loss_T`,
        `loss_R`, `loss_FL` (stage-weighted averages, unweighted by the term weights).
    """
    n_stages = len(pose_enc_list)
    valid = point_masks[:, 0].sum(dim=(-1, -2)) > MIN_VALID_FRAME0_PIXELS
    total_t = total_r = total_fl = 0.0
    for stage, pred in enumerate(pose_enc_list):
        stage_weight = gamma ** (n_stages - 1 - stage)
        if valid.sum() == 0:
            zero = (pred * 0).mean()
            loss_t = loss_r = loss_fl = zero
        else:
            diff = (pred[valid] - gt_pose_enc[valid]).abs()
            loss_t = fix_non_finite(diff[..., :3]).clamp(max=HARD_MAX).mean()
            loss_r = fix_non_finite(diff[..., 3:7]).mean()
            loss_fl = fix_non_finite(diff[..., 7:]).mean()
        total_t = total_t + loss_t * stage_weight
        total_r = total_r + loss_r * stage_weight
        total_fl = total_fl + loss_fl * stage_weight
    loss_t, loss_r, loss_fl = total_t / n_stages, total_r / n_stages, total_fl / n_stages
    return {
        "loss_camera": loss_t * weight_trans + loss_r * weight_rot + loss_fl * weight_focal,
        "loss_T": loss_t,
        "loss_R": loss_r,
        "loss_FL": loss_fl,
    }


def depth_loss(
    pred_depth: torch.Tensor,
    pred_conf: torch.Tensor,
    gt_depth: torch.Tensor,
    point_masks: torch.Tensor,
    gamma: float = 1.0,
    alpha: float = 0.2,
    valid_range: float = 0.98,
    gradient_loss: str = "grad",
) -> dict[str, torch.Tensor]:
    """Confidence-weighted depth regression plus gradient loss (upstream `compute_depth_loss`).

    Args:
        pred_depth: `[B, S, H, W, 1]` (or `[B, S, H, W]`) predicted depth.
        pred_conf: `[B, S, H, W]` predicted confidence (> 0; VGGT gives 1 + exp(x)).
        gt_depth: `[B, S, H, W]` normalised GT depth (non-finite values are zeroed).
        point_masks: `[B, S, H, W]` bool validity.
        valid_range: quantile kept by `filter_by_quantile`; <= 0 disables the filter.
        gradient_loss: `"grad"` (multi-scale gradient loss, 4 scales) or `"none"`.

    Returns:
        0-d tensors `loss_conf_depth`, `loss_reg_depth`, `loss_grad_depth`; all zero (but still
        connected to the graph) when fewer than 100 pixels are valid.
    """
    if gradient_loss not in ("grad", "none"):
        raise UserError(f"loss gradient_loss={gradient_loss!r}: expected 'grad' or 'none'")
    if pred_depth.dim() == 5:
        pred_depth = pred_depth[..., 0]
    mask = point_masks.bool()
    gt_depth = fix_non_finite(gt_depth)
    if mask.sum() < MIN_VALID_DEPTH_PIXELS:
        zero = (pred_depth * 0.0).mean() + (pred_conf * 0.0).mean()
        return {"loss_conf_depth": zero, "loss_reg_depth": zero, "loss_grad_depth": zero}

    conf = pred_conf[mask]
    loss_reg = fix_non_finite((gt_depth[mask] - pred_depth[mask]).abs())
    loss_conf = fix_non_finite(gamma * loss_reg * conf - alpha * torch.log(conf))

    if gradient_loss == "grad":
        height, width = pred_depth.shape[-2:]
        loss_grad = multi_scale_gradient_loss(
            pred_depth.reshape(-1, height, width), gt_depth.reshape(-1, height, width), mask.reshape(-1, height, width)
        )
    else:
        loss_grad = (pred_depth * 0.0).mean()

    if valid_range > 0:
        loss_conf = filter_by_quantile(loss_conf, valid_range)
        loss_reg = filter_by_quantile(loss_reg, valid_range)
    return {"loss_conf_depth": loss_conf.mean(), "loss_reg_depth": loss_reg.mean(), "loss_grad_depth": loss_grad}


class VGGTLoss:
    """The upstream VGGT training objective (camera + depth), with upstream defaults.

    `objective = camera_weight · loss_camera + depth_weight · (conf + reg + grad)`. The camera term
    is skipped (its entries are 0) when `camera_weight == 0` or the predictions lack
    `pose_enc_list`; the depth terms likewise when `depth_weight == 0` or there is no `depth`.
    The batch must already be normalised with `normalize_gt`.

    Args:
        camera_weight: weight of `loss_camera` in the objective.
        depth_weight: weight of the three depth terms in the objective.
        gamma: per-stage decay of the camera loss (stage i of n weighted gamma^(n−1−i)).
        weight_trans, weight_rot, weight_focal: weights of T, R, FL inside `loss_camera`.
        depth_gamma, depth_alpha: `loss_conf = depth_gamma·|Δd|·c − depth_alpha·log c`.
        valid_range: quantile filter of the per-pixel depth losses (<= 0 disables it).
        gradient_loss: `"grad"` or `"none"`.
    """

    def __init__(
        self,
        camera_weight: float = 5.0,
        depth_weight: float = 1.0,
        gamma: float = 0.6,
        weight_trans: float = 1.0,
        weight_rot: float = 1.0,
        weight_focal: float = 0.5,
        depth_gamma: float = 1.0,
        depth_alpha: float = 0.2,
        valid_range: float = 0.98,
        gradient_loss: str = "grad",
    ):
        if gradient_loss not in ("grad", "none"):
            raise UserError(f"loss.gradient_loss={gradient_loss!r}: expected 'grad' or 'none'")
        if camera_weight < 0 or depth_weight < 0:
            raise UserError(f"loss weights must be >= 0 (camera_weight={camera_weight}, depth_weight={depth_weight})")
        self.camera_weight = camera_weight
        self.depth_weight = depth_weight
        self.gamma = gamma
        self.weight_trans = weight_trans
        self.weight_rot = weight_rot
        self.weight_focal = weight_focal
        self.depth_gamma = depth_gamma
        self.depth_alpha = depth_alpha
        self.valid_range = valid_range
        self.gradient_loss = gradient_loss

    def __call__(self, predictions: dict, batch: dict) -> dict[str, torch.Tensor]:
        """Compute all loss terms.

        Args:
            predictions: model output with `depth [B,S,H,W,1]`, `depth_conf [B,S,H,W]` and/or
                `pose_enc_list` (list of `[B,S,9]`).
            batch: normalised batch with `depths`, `point_masks`, `extrinsics`, `intrinsics` and
                `images [B,S,3,H,W]` (only its H, W are used).

        Returns:
            dict of 0-d tensors with keys `LOSS_KEYS`.

        Raises:
            UserError: neither term can be computed.
        """
        use_depth = self.depth_weight > 0 and "depth" in predictions
        use_camera = self.camera_weight > 0 and bool(predictions.get("pose_enc_list"))
        if not (use_depth or use_camera):
            raise UserError("loss: nothing to compute (no depth / pose_enc_list predictions with a weight > 0)")
        reference = predictions["depth"] if use_depth else predictions["pose_enc_list"][-1]
        zero = reference.new_zeros(())
        objective = zero

        depth_terms = {"loss_conf_depth": zero, "loss_reg_depth": zero, "loss_grad_depth": zero}
        if use_depth:
            depth_terms = depth_loss(
                predictions["depth"],
                predictions["depth_conf"],
                batch["depths"],
                batch["point_masks"],
                gamma=self.depth_gamma,
                alpha=self.depth_alpha,
                valid_range=self.valid_range,
                gradient_loss=self.gradient_loss,
            )
            depth_total = (
                depth_terms["loss_conf_depth"] + depth_terms["loss_reg_depth"] + depth_terms["loss_grad_depth"]
            )
            objective = self.depth_weight * depth_total

        camera_terms = {"loss_camera": zero, "loss_T": zero, "loss_R": zero, "loss_FL": zero}
        if use_camera:
            image_hw = tuple((batch["images"] if "images" in batch else batch["depths"]).shape[-2:])
            gt_pose_enc = extri_intri_to_pose_encoding(batch["extrinsics"], batch["intrinsics"], image_hw)
            camera_terms = camera_loss(
                predictions["pose_enc_list"],
                gt_pose_enc,
                batch["point_masks"],
                gamma=self.gamma,
                weight_trans=self.weight_trans,
                weight_rot=self.weight_rot,
                weight_focal=self.weight_focal,
            )
            objective = self.camera_weight * camera_terms["loss_camera"] + objective
        return {"objective": objective, **camera_terms, **depth_terms}
