"""Depth resampling on oblique planes: valid whatever the slope; steps and creases stay invalid.

The plane scenes are analytic: one rectangle ray cast through an ETH3D-like THIN_PRISM_FISHEYE
camera and written in ETH3D's format, then loaded through `ETH3DScene` at several downsampling
factors and compared with the exact depth of every output pixel's own ray.
"""

import numpy as np
import pytest

from lora_train.data.colmap import Camera, Image, write_cameras, write_images
from lora_train.data.eth3d import DEPTH_EDGE_TOLERANCE, ETH3DScene, sample_depth
from lora_train.data.raycast import Geometry, Material, Quad, RayCamera, cast
from lora_train.data.synthetic import write_jpeg

SOURCE_W, SOURCE_H = 672, 448
# ETH3D's field of view (fx ≈ 0.564·W) and distortion of the size ETH3D's calibrations have
CAMERA = Camera(1, "THIN_PRISM_FISHEYE", SOURCE_W, SOURCE_H,
                (0.564 * SOURCE_W, 0.5646 * SOURCE_W, SOURCE_W / 2 + 3.0, SOURCE_H / 2 - 2.0,
                 0.21, 0.21, 3e-4, -2e-4, -0.158, 0.407, 1e-3, -8e-4))
VIEW = "dslr_images/DSC_0001.JPG"
WIDTHS = (658, 336, 168, 84)  # 1x, 2x, 4x, 8x fewer pixels across than the source
MIN_GOOD_SHARE = 0.98
DEPTH_REL_LIMIT = 0.005


def _plane(incidence_deg: float, tilt: str, distance: float = 10.0, far: float = 8.0) -> Geometry:
    """A rectangle whose normal makes `incidence_deg` with the optical axis at the image centre.

    tilt "ground": the plane falls away towards the top of the image (ground at a grazing angle);
    "side": towards the left (a facade seen from the side); "diagonal": both. The central ray
    meets it at depth `distance`; it ends where its depth reaches `far` · `distance` and reaches
    past every other image border.
    """
    t = np.radians(incidence_deg)
    s, c = np.sin(t), np.cos(t)
    tilt_dir = {"ground": np.array([0.0, 1.0]), "side": np.array([1.0, 0.0]),
                "diagonal": np.array([1.0, 1.0]) / np.sqrt(2)}[tilt]
    along = np.array([c * tilt_dir[0], c * tilt_dir[1], -s])  # in the plane, away from the camera
    across = np.array([tilt_dir[1], -tilt_dir[0], 0.0])
    to_far = (far - 1) * distance / max(s, 1e-9)
    corner = np.array([0.0, 0.0, distance]) - to_far * along - 1e4 * across
    quad = Quad(corner, (to_far + 50 * distance) * along, 2e4 * across, "plaster")
    return Geometry([quad], {"plaster": Material("plaster")})


def _write_view(root, geometry: Geometry) -> None:
    """One view in ETH3D's layout: identity pose, analytic z at every distorted pixel centre."""
    scene = root / "plane"
    z = cast(geometry, RayCamera(CAMERA.model, CAMERA.params, SOURCE_W, SOURCE_H, np.eye(3), np.zeros(3))).z
    write_jpeg(scene / "images" / VIEW, np.full((SOURCE_H, SOURCE_W, 3), 128, np.uint8))
    depth_path = scene / "ground_truth_depth" / VIEW
    depth_path.parent.mkdir(parents=True)
    z.astype("<f4").tofile(depth_path)
    write_cameras(scene / "dslr_calibration_jpg" / "cameras.txt", [CAMERA])
    write_images(scene / "dslr_calibration_jpg" / "images.txt",
                 [Image(1, np.array([1.0, 0.0, 0.0, 0.0]), np.zeros(3), 1, VIEW)])


def _sees_plane(geometry: Geometry, intrinsics: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W] bool: the whole pixel footprint lies on the plane (all four pixel corners hit it)."""
    corners = intrinsics.copy()
    corners[:2, 2] += 0.5  # a (W+1)x(H+1) grid of pixel corners
    z = cast(geometry, RayCamera.pinhole(corners, width + 1, height + 1, np.eye(3, 4))).z
    hit = np.isfinite(z)
    return hit[:-1, :-1] & hit[1:, :-1] & hit[:-1, 1:] & hit[1:, 1:]


@pytest.mark.parametrize("tilt, incidence", [("ground", 0), ("ground", 45), ("ground", 70), ("ground", 80),
                                             ("ground", 85), ("side", 70), ("side", 85), ("diagonal", 85)])
def test_oblique_plane_keeps_its_ground_truth(tmp_path, tilt, incidence):
    geometry = _plane(incidence, tilt)
    _write_view(tmp_path, geometry)
    scene = ETH3DScene(tmp_path, "plane", cache_dir=False)
    for width in WIDTHS:
        view = scene.load_view(VIEW, width)
        h, w = view["depth"].shape
        truth = cast(geometry, RayCamera.pinhole(view["intrinsics"], w, h, view["extrinsics"])).z
        sees = _sees_plane(geometry, view["intrinsics"], w, h)
        valid = view["valid"]
        assert sees.sum() > 0.3 * sees.size
        assert not (valid & ~np.isfinite(truth)).any()  # nothing invented beyond the plane
        error = np.abs(view["depth"][valid] - truth[valid]) / truth[valid]
        good = np.zeros_like(valid)
        good[valid] = error < DEPTH_REL_LIMIT
        share = (good & sees).sum() / sees.sum()
        factor = scene.output_camera(CAMERA, width, h).source_per_pixel
        assert share >= MIN_GOOD_SHARE, (tilt, incidence, f"{factor:.1f}x", share)
        assert error.max() < DEPTH_EDGE_TOLERANCE, (tilt, incidence, f"{factor:.1f}x", error.max())


@pytest.mark.parametrize("kind", ["step", "crease"])
def test_steps_and_creases_on_steep_planes_stay_invalid(kind):
    """Depth changes by 3-50 % per pixel (steeper than the edge tolerance) on both sides.

    step: the plane jumps 30 % further away between columns 14 and 15. crease: a concave corner
    at column 15 (the slope reverses). Away from the discontinuity every sample is exact.
    """
    height, width, slope = 10, 30, 0.0045

    def true_depth(x, y):
        if kind == "step":
            inverse = np.where(x < 14.5, 0.14 - slope * x, (0.14 - slope * x) / 1.3)
        else:
            inverse = 0.14 - slope * np.minimum(x, 2 * 15 - x)
        return 1.0 / (inverse + 1e-4 * y)

    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    depth = true_depth(cols, rows).astype(np.float32)
    per_pixel = np.abs(np.diff(depth, axis=1)) / np.minimum(depth[:, 1:], depth[:, :-1])
    assert per_pixel.min() > DEPTH_EDGE_TOLERANCE
    # samples on a fine grid where the 4x4 neighbourhood lies inside the map
    map_x, map_y = np.meshgrid(np.arange(10, 10 * (width - 2)) / 10, np.linspace(1, height - 2.1, 7))
    out = sample_depth(depth, map_x, map_y)
    straddles = np.floor(map_x) == 14 if kind == "step" else (map_x > 14) & (map_x < 16)
    assert straddles.any() and np.all(out[straddles] == 0)
    away = np.abs(map_x - (14.5 if kind == "step" else 15)) > 2
    assert np.all(out[away] > 0)
    np.testing.assert_allclose(out[away], true_depth(map_x[away], map_y[away]), rtol=1e-5)
