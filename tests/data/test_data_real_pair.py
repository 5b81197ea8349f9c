"""Real photographs through the ETH3D data layer: the Middlebury 2014 Motorcycle pair bundled by
scikit-image, written as an ETH3D scene by `lora_train.data.real_pair`."""

import importlib.util

import cv2
import numpy as np
import pytest
import skimage  # noqa: F401  (a test dependency: the pair ships inside it)
import torch

from lora_train.data import real_pair
from lora_train.data.colmap import read_cameras, read_images
from lora_train.data.eth3d import ETH3DScene
from lora_train.data.real_pair import (MOTORCYCLE_BASELINE_M, MOTORCYCLE_DOFFS, MOTORCYCLE_FOCAL,
                                       forward_warp_depth, read_motorcycle, write_motorcycle_scene)
from lora_train.data.windows import ETH3DWindows
from lora_train.errors import UserError
from lora_train.metrics import depth_metrics
from lora_train.model import VGGT, VGGTConfig

LEFT, RIGHT = "dslr_images/im0.JPG", "dslr_images/im1.JPG"
H, W = 500, 741


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("real_pair")
    write_motorcycle_scene(out)
    return out


@pytest.fixture(scope="module")
def views(root, tmp_path_factory):
    """{width: (left view, right view)} loaded through ETH3DScene."""
    scene = ETH3DScene(root, "motorcycle", cache_dir=tmp_path_factory.mktemp("real_pair_cache"))
    return {width: (scene.load_view(LEFT, width), scene.load_view(RIGHT, width)) for width in (126, 518)}


def _warp_error(src: dict, dst: dict, baseline_scale: float = 1.0) -> float:
    """Mean abs RGB difference between `src` and `dst`'s image sampled where `src`'s valid depth
    lands in `dst` (relative translation scaled by `baseline_scale`); grey levels of 255."""
    k0, k1, e0, e1 = src["intrinsics"], dst["intrinsics"], src["extrinsics"], dst["extrinsics"]
    rotation = e1[:, :3] @ e0[:, :3].T
    translation = (e1[:, 3] - rotation @ e0[:, 3]) * baseline_scale
    rows, cols = np.nonzero(src["valid"])
    z = src["depth"][rows, cols].astype(np.float64)
    cam = np.stack([(cols - k0[0, 2]) / k0[0, 0] * z, (rows - k0[1, 2]) / k0[1, 1] * z, z], axis=1)
    p = cam @ rotation.T + translation
    x, y = k1[0, 0] * p[:, 0] / p[:, 2] + k1[0, 2], k1[1, 1] * p[:, 1] / p[:, 2] + k1[1, 2]
    h, w = dst["depth"].shape
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    assert inside.mean() > 0.6  # the comparison covers most valid pixels
    x, y = x[inside], y[inside]
    x0, y0 = np.minimum(x.astype(int), w - 2), np.minimum(y.astype(int), h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    image = dst["image"].astype(np.float64)
    sampled = ((1 - fy) * ((1 - fx) * image[y0, x0] + fx * image[y0, x0 + 1])
               + fy * ((1 - fx) * image[y0 + 1, x0] + fx * image[y0 + 1, x0 + 1]))  # bilinear
    return float(np.abs(sampled - src["image"][rows[inside], cols[inside]]).mean())


def test_written_tree_is_eth3d_format(root):
    scene_dir = root / "motorcycle"
    pair = read_motorcycle()
    disparity = pair["disparity"]
    left = np.fromfile(scene_dir / "ground_truth_depth" / LEFT, dtype="<f4")
    assert left.size == H * W
    left = left.reshape(H, W)
    assert np.array_equal(np.isfinite(left), np.isfinite(disparity))
    assert np.all(np.isposinf(left[~np.isfinite(disparity)]))
    expected = MOTORCYCLE_FOCAL * MOTORCYCLE_BASELINE_M / (disparity[np.isfinite(disparity)] + MOTORCYCLE_DOFFS)
    np.testing.assert_allclose(left[np.isfinite(left)], expected, rtol=1e-6)
    valid_depths = left[np.isfinite(left)]
    assert np.isfinite(left).mean() > 0.9  # 0.927
    assert 1.5 < valid_depths.min() and valid_depths.max() < 5.5  # 1.9 .. 5.0 m
    assert 2.0 < np.median(valid_depths) < 3.2  # a motorcycle a few metres away: 2.63 m
    right = np.fromfile(scene_dir / "ground_truth_depth" / RIGHT, dtype="<f4").reshape(H, W)
    assert 0.75 < np.isfinite(right).mean() < np.isfinite(left).mean()

    for folder, subdir in (("dslr_calibration_jpg", "dslr_images"),
                           ("dslr_calibration_undistorted", "dslr_images_undistorted")):
        cameras = read_cameras(scene_dir / folder / "cameras.txt")
        assert [c.model for c in cameras.values()] == ["PINHOLE", "PINHOLE"]
        fx, fy, cx, cy = cameras[0].params
        assert (cameras[0].width, cameras[0].height, fx, fy) == (W, H, MOTORCYCLE_FOCAL, MOTORCYCLE_FOCAL)
        assert (cx, cy) == pytest.approx((311.193 + 0.5, 254.877 + 0.5))  # COLMAP pixel convention
        assert cameras[1].params[2] == pytest.approx(cx + MOTORCYCLE_DOFFS)
        images = list(read_images(scene_dir / folder / "images.txt").values())
        assert [im.name for im in images] == [f"{subdir}/im0.JPG", f"{subdir}/im1.JPG"]
        np.testing.assert_allclose(images[0].extrinsics(), np.eye(3, 4))
        np.testing.assert_allclose(images[1].extrinsics()[:, 3], [-MOTORCYCLE_BASELINE_M, 0, 0])
        np.testing.assert_allclose(images[1].center(), [MOTORCYCLE_BASELINE_M, 0, 0])
        assert (scene_dir / folder / "points3D.txt").is_file()
    for name, rgb in ((LEFT, pair["left"]), (RIGHT, pair["right"])):
        for folder in ("dslr_images", "dslr_images_undistorted"):
            data = (scene_dir / "images" / folder / name.split("/")[1]).read_bytes()
            assert data[:3] == b"\xff\xd8\xff"  # a JPEG named .JPG
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            assert np.abs(decoded.astype(np.int16) - rgb).mean() < 3.0  # quality 95, 4:2:0 chroma: 2.3
    assert not list(root.glob(".*"))  # no temporary folder left behind


@pytest.mark.parametrize("width", [126, 518])
def test_scene_loads_both_views(views, width):
    left, right = views[width]
    h = left["depth"].shape[0]
    for view in (left, right):
        assert view["image"].shape == (h, width, 3) and h % 14 == 0
        assert view["depth"].dtype == np.float32 and np.array_equal(view["valid"], view["depth"] > 0)
    assert left["valid"].mean() > 0.85  # measured 0.897 (126) and 0.903 (518)
    assert right["valid"].mean() > 0.78  # forward-warped: 0.821 and 0.827
    valid_depths = np.concatenate([left["depth"][left["valid"]], right["depth"][right["valid"]]])
    assert 1.8 < valid_depths.min() and valid_depths.max() < 5.2
    np.testing.assert_allclose(right["extrinsics"][:, 3], [-MOTORCYCLE_BASELINE_M, 0, 0])


def test_undistorted_image_source_matches(root, views):
    scene = ETH3DScene(root, "motorcycle", image_source="undistorted", cache_dir=False)
    view = scene.load_view(RIGHT, 126)
    np.testing.assert_array_equal(view["image"], views[126][1]["image"])
    np.testing.assert_array_equal(view["depth"], views[126][1]["depth"])


def test_photometric_consistency_across_the_baseline(views):
    """Left depth and poses carry left pixels onto matching right pixels, and the forward-warped
    right depth carries right pixels back; a 10 % wrong baseline (~2 px at width 518) is far worse."""
    left, right = views[518]
    for src, dst in ((left, right), (right, left)):
        correct = _warp_error(src, dst)
        wrong = min(_warp_error(src, dst, 0.9), _warp_error(src, dst, 1.1))
        assert correct < 12.0  # measured 9.9 left→right (incl. pixels occluded in the right view), 4.9 right→left
        assert correct < 0.5 * wrong  # wrong baselines: 25.4 and 23.0


def test_forward_warp_depth_occludes_and_leaves_no_cracks():
    w = 40
    cols = np.arange(w)
    depth = np.full((2, w), 4.0)
    depth[0, 20:26] = 2.0  # row 0: a foreground block in front of a wall
    depth[1] = 2.0 + 0.015 * cols  # row 1: a receding surface (disparity shrinks along the row)
    disparity = 40.0 / depth - 8.0  # disparity = f·B / z − doffs
    out = forward_warp_depth(depth.astype(np.float32), disparity)
    # Row 0: the wall (disparity 2) moves by 2 px, the block (disparity 12) by 12 px and hides the
    # wall behind it; right of the block lies wall the left view never saw.
    assert np.all(out[0, 8:14] == 2.0)
    assert np.all(out[0, :8] == 4.0) and np.all(out[0, 14:18] == 4.0) and np.all(out[0, 24:38] == 4.0)
    assert np.all(np.isinf(out[0, 18:24])) and np.all(np.isinf(out[0, 38:]))
    # Row 1: stretched by ~12 % in the right view; rounding each sample would leave cracks, the
    # rasterised surface does not, and z (unchanged by an x-translation) is interpolated exactly.
    right_x = cols - disparity[1]
    covered = np.arange(max(0, int(np.ceil(right_x.min()))), int(np.floor(right_x.max())) + 1)  # 0..31
    assert not set(covered) <= set(np.round(right_x).astype(int))
    assert np.all(np.isfinite(out[1, covered])) and np.all(np.isinf(np.delete(out[1], covered)))
    np.testing.assert_allclose(out[1, covered], 1 / np.interp(covered, right_x, 1 / depth[1]), rtol=1e-5)


def test_windows_and_tiny_vggt_run_on_real_photos(root):
    torch.set_num_threads(1)
    with pytest.raises(UserError, match="no val scenes"):  # one scene lands in train by the hash split
        ETH3DWindows(root, split="val", num_views=2, width=126, cache_dir=False)
    windows = ETH3DWindows(root, split="val", val_scenes=["motorcycle"], num_views=2, width=126, cache_dir=False)
    assert len(windows) == 2
    window = windows[0]
    s, h, w = 2, windows.height, 126
    shapes = {"images": (s, 3, h, w), "depths": (s, h, w), "extrinsics": (s, 3, 4), "intrinsics": (s, 3, 3),
              "point_masks": (s, h, w), "world_points": (s, h, w, 3), "cam_points": (s, h, w, 3)}
    for key, shape in shapes.items():
        assert tuple(window[key].shape) == shape, key
    assert window["images"].dtype == torch.float32 and 0 <= window["images"].min() and window["images"].max() <= 1
    assert window["point_masks"].dtype == torch.bool and window["point_masks"].float().mean() > 0.8
    assert window["scene"] == "motorcycle" and window["view_names"] == [LEFT, RIGHT]
    # World points of right-view pixels, looked up in the left view, are the same 3D points.
    k, e = window["intrinsics"][0].double().numpy(), window["extrinsics"][0].double().numpy()
    points = window["world_points"][1][window["point_masks"][1]].double().numpy()
    cam = points @ e[:, :3].T + e[:, 3]
    x = np.round(k[0, 0] * cam[:, 0] / cam[:, 2] + k[0, 2]).astype(int)
    y = np.round(k[1, 1] * cam[:, 1] / cam[:, 2] + k[1, 2]).astype(int)
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    seen = window["point_masks"][0].numpy()[y[inside], x[inside]]
    gap = np.linalg.norm(window["world_points"][0].numpy()[y[inside], x[inside]][seen] - points[inside][seen], axis=1)
    assert np.median(gap) < 0.02  # metres; a pixel spans ~1.3 cm at 2.6 m

    torch.manual_seed(0)
    model = VGGT(VGGTConfig.tiny()).eval()
    with torch.no_grad():
        out = model(window["images"])
    pred = out["depth"][0, ..., 0].numpy()
    assert pred.shape == (s, h, w)
    metrics = depth_metrics(pred, window["depths"].numpy(), window["point_masks"].numpy(), align="median")
    assert all(np.isfinite(v) for v in metrics.values()), metrics


def test_cli_writes_scene_and_reports_missing_scikit_image(tmp_path, monkeypatch, capsys):
    real_pair.main(["--out", str(tmp_path), "--scene", "moto"])
    assert (tmp_path / "moto" / "dslr_calibration_jpg" / "cameras.txt").is_file()
    with pytest.raises(SystemExit) as exit_info:
        real_pair.main(["--out", str(tmp_path), "--scene", "../escape"])
    assert exit_info.value.code == 2 and "--scene" in capsys.readouterr().err
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "skimage" else find_spec(name, *args))
    with pytest.raises(SystemExit) as exit_info:
        real_pair.main(["--out", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: scikit-image is not installed") and err.count("\n") == 1
    assert not (tmp_path / "none" / "motorcycle").exists()
