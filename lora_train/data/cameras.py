"""Camera models of ETH3D in COLMAP's parameter order and pixel convention.

COLMAP/ETH3D pixel coordinates put the centre of the top-left pixel at (0.5, 0.5); array
(OpenCV) coordinates put it at (0, 0). `project` and `unproject` work in COLMAP pixels.

THIN_PRISM_FISHEYE (`fx fy cx cy k1 k2 p1 p2 k3 k4 sx1 sy1`), exactly as ETH3D's
dataset-pipeline (`FisheyeBase<ThinPrismCamera>`), from normalised (x, y) = (X/Z, Y/Z):

    r = sqrt(x² + y²); θ = atan(r); (u, v) = (θ / r)·(x, y)        # so u² + v² = θ²
    radial = 1 + k1 θ² + k2 θ⁴ + k3 θ⁶ + k4 θ⁸
    u' = u·radial + 2 p1 u v + p2 (θ² + 2u²) + sx1 θ²
    v' = v·radial + 2 p2 u v + p1 (θ² + 2v²) + sy1 θ²
    pixel = (fx u' + cx, fy v' + cy)
"""

import numpy as np

# Parameter counts of COLMAP's camera models (any other name is unknown).
CAMERA_MODEL_NUM_PARAMS = {
    "SIMPLE_PINHOLE": 3,
    "PINHOLE": 4,
    "SIMPLE_RADIAL": 4,
    "RADIAL": 5,
    "OPENCV": 8,
    "OPENCV_FISHEYE": 8,
    "FULL_OPENCV": 12,
    "FOV": 5,
    "SIMPLE_RADIAL_FISHEYE": 4,
    "RADIAL_FISHEYE": 5,
    "THIN_PRISM_FISHEYE": 12,
}

# Models this package can project with.
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "THIN_PRISM_FISHEYE")


def focal_and_center(model: str, params) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of a camera, COLMAP pixel convention."""
    if model == "SIMPLE_PINHOLE":
        f, cx, cy = params[:3]
        return float(f), float(f), float(cx), float(cy)
    fx, fy, cx, cy = params[:4]
    return float(fx), float(fy), float(cx), float(cy)


def thin_prism_fisheye_distort(x: np.ndarray, y: np.ndarray, params) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pinhole coordinates (X/Z, Y/Z) → distorted focal-plane coordinates (u', v')."""
    k1, k2, p1, p2, k3, k4, sx1, sy1 = params[4:12]
    r = np.sqrt(x * x + y * y)
    theta = np.arctan(r)
    scale = np.where(r > 1e-12, theta / np.maximum(r, 1e-12), 1.0)
    u, v = x * scale, y * scale
    t2 = u * u + v * v
    radial = 1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))
    du = u * radial + 2 * p1 * u * v + p2 * (t2 + 2 * u * u) + sx1 * t2
    dv = v * radial + 2 * p2 * u * v + p1 * (t2 + 2 * v * v) + sy1 * t2
    return du, dv


def _thin_prism_residual_and_jacobian(u, v, params):
    """Distortion of fisheye coordinates (u, v) and its 2x2 Jacobian (analytic)."""
    k1, k2, p1, p2, k3, k4, sx1, sy1 = params[4:12]
    t2 = u * u + v * v
    radial = 1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))
    d_radial = k1 + t2 * (2 * k2 + t2 * (3 * k3 + t2 * 4 * k4))  # d radial / d t2
    du = u * radial + 2 * p1 * u * v + p2 * (t2 + 2 * u * u) + sx1 * t2
    dv = v * radial + 2 * p2 * u * v + p1 * (t2 + 2 * v * v) + sy1 * t2
    j00 = radial + 2 * u * u * d_radial + 2 * p1 * v + 6 * p2 * u + 2 * sx1 * u
    j01 = 2 * u * v * d_radial + 2 * p1 * u + 2 * p2 * v + 2 * sx1 * v
    j10 = 2 * u * v * d_radial + 2 * p2 * v + 2 * p1 * u + 2 * sy1 * u
    j11 = radial + 2 * v * v * d_radial + 2 * p2 * u + 6 * p1 * v + 2 * sy1 * v
    return du, dv, j00, j01, j10, j11


def thin_prism_fisheye_undistort(du: np.ndarray, dv: np.ndarray, params, iterations: int = 20):
    """Inverse of `thin_prism_fisheye_distort`: (u', v') → normalised (X/Z, Y/Z) by Newton steps.

    Rays at or beyond 90° from the optical axis have no pinhole coordinates; they come back NaN.
    """
    u, v = np.array(du, dtype=np.float64), np.array(dv, dtype=np.float64)
    for _ in range(iterations):
        fu, fv, j00, j01, j10, j11 = _thin_prism_residual_and_jacobian(u, v, params)
        ru, rv = fu - du, fv - dv
        det = j00 * j11 - j01 * j10
        det = np.where(np.abs(det) < 1e-12, 1e-12, det)
        u = u - (j11 * ru - j01 * rv) / det
        v = v - (-j10 * ru + j00 * rv) / det
        if np.nanmax(np.abs(ru), initial=0.0) < 1e-14 and np.nanmax(np.abs(rv), initial=0.0) < 1e-14:
            break
    theta = np.sqrt(u * u + v * v)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(theta > 1e-12, np.tan(theta) / np.maximum(theta, 1e-12), 1.0)
        scale = np.where(theta < np.pi / 2 - 1e-6, scale, np.nan)
    return u * scale, v * scale


def project(model: str, params, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised camera coordinates (X/Z, Y/Z) → COLMAP pixel coordinates."""
    fx, fy, cx, cy = focal_and_center(model, params)
    if model == "THIN_PRISM_FISHEYE":
        x, y = thin_prism_fisheye_distort(x, y, params)
    elif model not in ("PINHOLE", "SIMPLE_PINHOLE"):
        raise ValueError(f"camera model {model} cannot be projected (supported: {SUPPORTED_MODELS})")
    return fx * x + cx, fy * y + cy


def unproject(model: str, params, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP pixel coordinates → normalised camera coordinates (X/Z, Y/Z)."""
    fx, fy, cx, cy = focal_and_center(model, params)
    x, y = (np.asarray(px, dtype=np.float64) - cx) / fx, (np.asarray(py, dtype=np.float64) - cy) / fy
    if model == "THIN_PRISM_FISHEYE":
        return thin_prism_fisheye_undistort(x, y, params)
    if model not in ("PINHOLE", "SIMPLE_PINHOLE"):
        raise ValueError(f"camera model {model} cannot be unprojected (supported: {SUPPORTED_MODELS})")
    return x, y


def quaternion_to_rotation(qvec) -> np.ndarray:
    """Hamilton quaternion (w, x, y, z), any norm or sign → 3x3 rotation matrix."""
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotation_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix → unit Hamilton quaternion (w, x, y, z) with w >= 0."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = np.trace(m)
    candidates = np.array([trace, m[0, 0], m[1, 1], m[2, 2]])
    i = int(np.argmax(candidates))
    if i == 0:
        s = 2 * np.sqrt(1 + trace)
        q = [s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif i == 1:
        s = 2 * np.sqrt(1 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif i == 2:
        s = 2 * np.sqrt(1 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2 * np.sqrt(1 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4]
    q = np.array(q) / np.linalg.norm(q)
    return q if q[0] >= 0 else -q
