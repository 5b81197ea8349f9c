"""Camera pose encoding `absT_quaR_FoV` and quaternion/rotation conversions.

Layout of the 9-d encoding: `[0:3]` translation t of the camera-from-world extrinsic,
`[3:7]` rotation quaternion XYZW (scalar last, w >= 0), `[7]` vertical FoV, `[8]` horizontal FoV.
Decoding assumes the principal point at the image centre (cx = W/2, cy = H/2).
"""

import torch
import torch.nn.functional as F


def quat_to_mat(quaternions: torch.Tensor) -> torch.Tensor:
    """Quaternions XYZW `[..., 4]` (need not be unit length) → rotation matrices `[..., 3, 3]`."""
    i, j, k, r = torch.unbind(quaternions, -1)
    two_s = 2.0 / (quaternions * quaternions).sum(-1)
    matrix = torch.stack(
        (
            1 - two_s * (j * j + k * k),
            two_s * (i * j - k * r),
            two_s * (i * k + j * r),
            two_s * (i * j + k * r),
            1 - two_s * (i * i + k * k),
            two_s * (j * k - i * r),
            two_s * (i * k - j * r),
            two_s * (j * k + i * r),
            1 - two_s * (i * i + j * j),
        ),
        -1,
    )
    return matrix.reshape(quaternions.shape[:-1] + (3, 3))


def _sqrt_positive_part(x: torch.Tensor) -> torch.Tensor:
    """sqrt(max(0, x)) with a zero (not NaN) subgradient at 0."""
    ret = torch.zeros_like(x)
    positive = x > 0
    ret[positive] = torch.sqrt(x[positive])
    return ret


def mat_to_quat(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices `[..., 3, 3]` → unit quaternions XYZW `[..., 4]` with w >= 0.

    Of the four algebraically equivalent candidates, the best-conditioned one (largest
    denominator) is used for each matrix.
    """
    if matrix.size(-1) != 3 or matrix.size(-2) != 3:
        raise ValueError(f"Invalid rotation matrix shape {tuple(matrix.shape)}.")
    batch_dim = matrix.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(matrix.reshape(batch_dim + (9,)), dim=-1)

    q_abs = _sqrt_positive_part(
        torch.stack(
            [
                1.0 + m00 + m11 + m22,
                1.0 + m00 - m11 - m22,
                1.0 - m00 + m11 - m22,
                1.0 - m00 - m11 + m22,
            ],
            dim=-1,
        )
    )
    # Rows: candidates computed from r, i, j, k respectively (WXYZ order here).
    quat_by_rijk = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    floor = torch.tensor(0.1).to(dtype=q_abs.dtype, device=q_abs.device)
    quat_candidates = quat_by_rijk / (2.0 * q_abs[..., None].max(floor))
    best = F.one_hot(q_abs.argmax(dim=-1), num_classes=4) > 0.5
    out = quat_candidates[best, :].reshape(batch_dim + (4,))
    out = out[..., [1, 2, 3, 0]]  # WXYZ → XYZW
    return torch.where(out[..., 3:4] < 0, -out, out)


def extri_intri_to_pose_encoding(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_size_hw: tuple[int, int]
) -> torch.Tensor:
    """Encode cameras as `absT_quaR_FoV`.

    Args:
        extrinsics: `[B, S, 3, 4]` OpenCV camera-from-world `[R|t]`.
        intrinsics: `[B, S, 3, 3]` pinhole matrices in pixels.
        image_size_hw: (H, W) of the images the intrinsics refer to.

    Returns:
        `[B, S, 9]` float32: t (3), quaternion XYZW (4), fov_h, fov_w.
    """
    height, width = image_size_hw
    rotation = extrinsics[..., :3, :3]
    translation = extrinsics[..., :3, 3]
    quat = mat_to_quat(rotation)
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    return torch.cat([translation, quat, fov_h[..., None], fov_w[..., None]], dim=-1).float()


def pose_encoding_to_extri_intri(
    pose_encoding: torch.Tensor, image_size_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode `absT_quaR_FoV` into cameras.

    Args:
        pose_encoding: `[B, S, 9]`.
        image_size_hw: (H, W) of the images.

    Returns:
        extrinsics `[B, S, 3, 4]` (camera-from-world) and intrinsics `[B, S, 3, 3]` with the
        principal point at (W/2, H/2).
    """
    height, width = image_size_hw
    translation = pose_encoding[..., :3]
    rotation = quat_to_mat(pose_encoding[..., 3:7])
    fov_h = pose_encoding[..., 7]
    fov_w = pose_encoding[..., 8]
    extrinsics = torch.cat([rotation, translation[..., None]], dim=-1)

    fy = (height / 2.0) / torch.tan(fov_h / 2.0)
    fx = (width / 2.0) / torch.tan(fov_w / 2.0)
    intrinsics = torch.zeros(pose_encoding.shape[:-1] + (3, 3), dtype=pose_encoding.dtype, device=pose_encoding.device)
    intrinsics[..., 0, 0] = fx
    intrinsics[..., 1, 1] = fy
    intrinsics[..., 0, 2] = width / 2
    intrinsics[..., 1, 2] = height / 2
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics
