"""Evaluation metrics: monocular-depth metrics with scale alignment, and relative camera-pose metrics.

Depth (`depth_metrics`): AbsRel, SqRel, RMSE, log-RMSE, δ < 1.25^k (k = 1, 2, 3) and the τ < 1.03
inlier ratio, each computed per frame over its valid pixels and then averaged over frames. VGGT
predicts depth in the first-frame normalised scale, hence the alignment modes.

Pose (`pose_metrics`): the VGGT / PoseDiffusion protocol on all frame pairs: relative rotation
error (RRA), relative translation-direction error (RTA) and AUC@30 of max(rot_err, trans_err).
"""

import itertools

import numpy as np

from lora_train.errors import UserError

DEPTH_METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "log_rmse", "delta1", "delta2", "delta3", "tau103")
ALIGN_MODES = ("none", "median", "median_frame", "lsq")
MIN_DEPTH = 1e-6
POSE_THRESHOLDS_DEG = (5, 15, 30)
AUC_MAX_THRESHOLD_DEG = 30


def _as_sequence(name: str, array) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise UserError(f"depth_metrics: {name} must have shape [S,H,W] or [H,W], got {list(array.shape)}")
    return array


def _lsq_scale_shift(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Least-squares (s, b) minimising Σ(s·pred + b − gt)² over 1-d arrays."""
    design = np.stack([pred, np.ones_like(pred)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(design, gt, rcond=None)
    return float(scale), float(shift)


def align_depth(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, align: str = "median") -> np.ndarray:
    """Align predicted depth to the GT scale.

    Args:
        pred, gt: `[S, H, W]` float64 depth.
        valid: `[S, H, W]` bool.
        align: `"none"`; `"median"`: one scale median(gt)/median(pred) over all valid pixels of
            the sequence; `"median_frame"`: one such scale per frame; `"lsq"`: one least-squares
            scale and shift (in depth) over the sequence.

    Returns:
        `[S, H, W]` aligned prediction, clipped to at least `MIN_DEPTH` (a shift can make it
        non-positive).
    """
    if align not in ALIGN_MODES:
        raise UserError(f"depth_metrics: unknown align={align!r} (expected one of {', '.join(ALIGN_MODES)})")
    pred = np.maximum(pred, MIN_DEPTH)
    aligned = pred.copy()
    if not valid.any() or align == "none":
        return aligned
    if align == "median":
        aligned = pred * (np.median(gt[valid]) / np.median(pred[valid]))
    elif align == "median_frame":
        for frame, mask in enumerate(valid):
            if mask.any():
                aligned[frame] = pred[frame] * (np.median(gt[frame][mask]) / np.median(pred[frame][mask]))
    else:
        scale, shift = _lsq_scale_shift(pred[valid], gt[valid])
        aligned = scale * pred + shift
    return np.maximum(aligned, MIN_DEPTH)


def _frame_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Metrics of one frame on its valid pixels (1-d arrays, both positive)."""
    diff = pred - gt
    ratio = np.maximum(pred / gt, gt / pred)
    return {
        "abs_rel": float(np.mean(np.abs(diff) / gt)),
        "sq_rel": float(np.mean(diff**2 / gt)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "log_rmse": float(np.sqrt(np.mean((np.log(pred) - np.log(gt)) ** 2))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
        "tau103": float(np.mean(ratio < 1.03)),
    }


def depth_metrics(pred, gt, valid, align: str = "median") -> dict[str, float]:
    """Depth metrics of one sequence, averaged over frames.

    A pixel counts if `valid` is true, the GT is finite and > 0 and the prediction is finite.
    Every metric is computed per frame over that frame's counted pixels and then averaged over
    the frames that have any; frames without counted pixels are skipped. If no pixel counts at
    all, every value is NaN.

    Args:
        pred: `[S, H, W]` (one sequence) or `[H, W]` predicted depth.
        gt: same shape, GT depth.
        valid: same shape, bool mask.
        align: `"none"`, `"median"` (default: one scale per sequence, as VGGT predicts one
            consistent scale per sequence), `"median_frame"` or `"lsq"` (see `align_depth`).

    Returns:
        `abs_rel`, `sq_rel`, `rmse`, `log_rmse`, `delta1`, `delta2`, `delta3` (share with
        max(pred/gt, gt/pred) < 1.25^k) and `tau103` (share < 1.03); shares are fractions.

    Raises:
        UserError: unknown `align` or mismatched shapes.
    """
    if align not in ALIGN_MODES:
        raise UserError(f"depth_metrics: unknown align={align!r} (expected one of {', '.join(ALIGN_MODES)})")
    pred = _as_sequence("pred", pred).astype(np.float64)
    gt = _as_sequence("gt", gt).astype(np.float64)
    valid = _as_sequence("valid", valid).astype(bool)
    if not (pred.shape == gt.shape == valid.shape):
        raise UserError(
            f"depth_metrics: shapes differ: pred {list(pred.shape)}, gt {list(gt.shape)}, valid {list(valid.shape)}"
        )
    with np.errstate(invalid="ignore"):
        valid = valid & np.isfinite(gt) & (gt > 0) & np.isfinite(pred)
    aligned = align_depth(np.where(valid, pred, 1.0), gt, valid, align)

    per_frame = [_frame_metrics(aligned[s][valid[s]], gt[s][valid[s]]) for s in range(pred.shape[0]) if valid[s].any()]
    if not per_frame:
        return {key: float("nan") for key in DEPTH_METRIC_KEYS}
    return {key: float(np.mean([frame[key] for frame in per_frame])) for key in DEPTH_METRIC_KEYS}


def _as_homogeneous_cameras(name: str, extrinsics) -> np.ndarray:
    extrinsics = np.asarray(extrinsics, dtype=np.float64)
    if extrinsics.ndim != 3 or extrinsics.shape[1:] not in ((3, 4), (4, 4)):
        raise UserError(f"pose_metrics: {name} must have shape [S,3,4] or [S,4,4], got {list(extrinsics.shape)}")
    out = np.tile(np.eye(4), (extrinsics.shape[0], 1, 1))
    out[:, :3, :] = extrinsics[:, :3, :]
    return out


def _relative_poses(cameras: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """VGGT's relative poses `E_i⁻¹ · E_j` for index pairs (i, j) after aligning to camera 0: `[P, 4, 4]`.

    Aligning every camera to the first (`E ← E · E_0⁻¹`, as VGGT's CO3D evaluation does for the
    GT) makes the result independent of the world frame each set of cameras is expressed in.
    """
    cameras = cameras @ np.linalg.inv(cameras[0])
    return np.linalg.inv(cameras[first]) @ cameras[second]


def rotation_error_deg(rot_pred: np.ndarray, rot_gt: np.ndarray) -> np.ndarray:
    """Geodesic angle (degrees) between rotations `[P, 3, 3]`."""
    relative = np.swapaxes(rot_pred, -1, -2) @ rot_gt
    cos = (np.trace(relative, axis1=-2, axis2=-1) - 1.0) / 2.0
    axis_times_sin = 0.5 * np.stack(
        [
            relative[..., 2, 1] - relative[..., 1, 2],
            relative[..., 0, 2] - relative[..., 2, 0],
            relative[..., 1, 0] - relative[..., 0, 1],
        ],
        axis=-1,
    )
    # atan2 instead of arccos: accurate for small angles too
    return np.degrees(np.arctan2(np.linalg.norm(axis_times_sin, axis=-1), cos))


def translation_direction_error_deg(t_pred: np.ndarray, t_gt: np.ndarray, eps: float = 1e-15) -> np.ndarray:
    """Angle (degrees) between translation directions `[P, 3]`, sign-ambiguous: min(θ, 180° − θ)."""
    t_pred = t_pred / (np.linalg.norm(t_pred, axis=-1, keepdims=True) + eps)
    t_gt = t_gt / (np.linalg.norm(t_gt, axis=-1, keepdims=True) + eps)
    cos = np.abs(np.sum(t_pred * t_gt, axis=-1))
    sin = np.linalg.norm(np.cross(t_pred, t_gt), axis=-1)
    return np.degrees(np.arctan2(sin, cos))


def pose_auc(rot_err_deg: np.ndarray, trans_err_deg: np.ndarray, max_threshold: int = AUC_MAX_THRESHOLD_DEG) -> float:
    """AUC of the pose accuracy curve: mean over t = 1..max_threshold of share(max(rot, trans) < t).

    Same as VGGT's `calculate_auc_np` (histogram with 1° bins, the last bin closed at max_threshold).
    """
    max_errors = np.maximum(rot_err_deg, trans_err_deg)
    histogram, _ = np.histogram(max_errors, bins=np.arange(max_threshold + 1))
    return float(np.mean(np.cumsum(histogram / len(max_errors))))


def pose_metrics(pred_extrinsics, gt_extrinsics) -> dict[str, float]:
    """Relative pose metrics over all S·(S−1)/2 frame pairs (VGGT / PoseDiffusion protocol).

    Both camera sets are first aligned to their first camera; then for each pair i < j the
    relative pose `E_i⁻¹ · E_j` is formed for prediction and GT (as in VGGT's `test_co3d.py`); the
    rotation error is the geodesic angle between the relative rotations, the translation error
    the angle between the relative translation directions (sign-ambiguous, so scale and sign of
    the translation do not matter).

    Args:
        pred_extrinsics: `[S, 3, 4]` (or `[S, 4, 4]`) camera-from-world.
        gt_extrinsics: same shape.

    Returns:
        `rra5`, `rra15`, `rra30`, `rta5`, `rta15`, `rta30` (shares of pairs with error < threshold
        in degrees), `rot_err_mean`, `trans_err_mean` (degrees), `auc30` (see `pose_auc`), and
        `num_pairs`. With fewer than two frames every value is NaN (num_pairs 0).
    """
    pred = _as_homogeneous_cameras("pred_extrinsics", pred_extrinsics)
    gt = _as_homogeneous_cameras("gt_extrinsics", gt_extrinsics)
    if pred.shape != gt.shape:
        raise UserError(f"pose_metrics: shapes differ: pred {list(pred.shape)}, gt {list(gt.shape)}")
    keys = [f"rra{t}" for t in POSE_THRESHOLDS_DEG] + [f"rta{t}" for t in POSE_THRESHOLDS_DEG]
    keys += ["rot_err_mean", "trans_err_mean", "auc30"]
    pairs = np.array(list(itertools.combinations(range(pred.shape[0]), 2)), dtype=int).reshape(-1, 2)
    if len(pairs) == 0:
        return {**{key: float("nan") for key in keys}, "num_pairs": 0}

    rel_pred = _relative_poses(pred, pairs[:, 0], pairs[:, 1])
    rel_gt = _relative_poses(gt, pairs[:, 0], pairs[:, 1])
    rot_err = rotation_error_deg(rel_pred[:, :3, :3], rel_gt[:, :3, :3])
    trans_err = translation_direction_error_deg(rel_pred[:, :3, 3], rel_gt[:, :3, 3])

    out = {}
    for threshold in POSE_THRESHOLDS_DEG:
        out[f"rra{threshold}"] = float(np.mean(rot_err < threshold))
    for threshold in POSE_THRESHOLDS_DEG:
        out[f"rta{threshold}"] = float(np.mean(trans_err < threshold))
    out["rot_err_mean"] = float(np.mean(rot_err))
    out["trans_err_mean"] = float(np.mean(trans_err))
    out["auc30"] = pose_auc(rot_err, trans_err)
    out["num_pairs"] = len(pairs)
    return out
