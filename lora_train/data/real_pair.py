"""A real photograph pair as a 2-view ETH3D scene: Middlebury 2014 "Motorcycle" from scikit-image.

scikit-image (an optional extra) bundles the rectified stereo pair `skimage/data/motorcycle_left.png`,
`motorcycle_right.png` (500x741 RGB) and the left view's ground-truth disparity
`motorcycle_disp.npz` (`arr_0`, float32, inf = no ground truth), downsampled x4 from the Middlebury
2014 benchmark (Scharstein et al., GCPR 2014, https://vision.middlebury.edu/stereo/data/scenes2014/).
The files are read from the installed package; nothing is downloaded.

Calibration of the downsampled images (scikit-image's `stereo_motorcycle` docstring): focal
994.978 px, principal point (311.193, 254.877), principal-point offset of the right camera
doffs = 31.086 px, baseline 193.001 mm. Hence

    depth_m = focal · baseline_m / (disparity + doffs),  right camera cx = cx + doffs,

and a left pixel x (array coordinates) shows the same point as right pixel x − disparity.
The principal point is taken in OpenCV pixel-centre coordinates and written in COLMAP's (+0.5),
as ETH3D does. (The docstring divides the full-resolution values by 4; block averaging would put
them 0.375 px lower. That moves unprojected x, y by < 0.04 % and changes neither z nor the
stereo correspondence.)

Written tree (`<out>/<scene>/`), in ETH3D's exact formats:

    images/dslr_images/im0.JPG, im1.JPG                  JPEG (the rectified photos, no distortion)
    images/dslr_images_undistorted/im0.JPG, im1.JPG      the same JPEGs
    dslr_calibration_jpg/{cameras,images,points3D}.txt   PINHOLE, one camera per view
    dslr_calibration_undistorted/{cameras,images,points3D}.txt
    ground_truth_depth/dslr_images/im0.JPG, im1.JPG      raw little-endian float32 z, +inf = none

Poses (camera-from-world, metres): left = identity, right = translation (−baseline, 0, 0).
The right view's depth is the left depth forward-warped into the right image with a z-buffer
(`forward_warp_depth`); right pixels no left pixel maps to (occluded in the left view, or without
left ground truth) are +inf. No masks (nothing to exclude), no SfM points, no laser scan.

CLI: python -m lora_train.data.real_pair --out DIR [--scene NAME]
"""

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from lora_train.data.colmap import (
    Camera,
    Image,
    write_cameras,
    write_images,
    write_points3d,
)
from lora_train.data.synthetic import write_jpeg
from lora_train.errors import ArgumentParser, UserError, cli_main
from vggt_common.files import atomic_dir

MOTORCYCLE_FILES = ("motorcycle_left.png", "motorcycle_right.png", "motorcycle_disp.npz")
MOTORCYCLE_FOCAL = 994.978  # px, downsampled images
MOTORCYCLE_CX, MOTORCYCLE_CY = 311.193, 254.877  # px, OpenCV pixel centres, left camera
MOTORCYCLE_DOFFS = 31.086  # px, cx(right) − cx(left)
MOTORCYCLE_BASELINE_M = 0.193001
VIEW_NAMES = ("im0.JPG", "im1.JPG")  # Middlebury's names for left and right
SURFACE_TOLERANCE = 0.01  # neighbouring left pixels within 1 % depth lie on one surface


def skimage_data_dir() -> Path:
    """The installed `skimage/data` folder, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("scikit-image is not installed; `pip install scikit-image` (the `test` extra) "
                        "to get the bundled Motorcycle stereo pair")
    data_dir = Path(list(spec.submodule_search_locations)[0]) / "data"
    for name in MOTORCYCLE_FILES:
        if not (data_dir / name).is_file():
            raise UserError(f"{data_dir / name} is missing from the installed scikit-image")
    return data_dir


def disparity_to_depth(disparity: np.ndarray, focal: float, baseline_m: float, doffs: float) -> np.ndarray:
    """Middlebury disparity [H, W] (non-finite = none) → z-depth [H, W] float32 metres, +inf = none."""
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = focal * baseline_m / (disparity.astype(np.float64) + doffs)
    depth[~np.isfinite(depth) | (depth <= 0)] = np.inf
    return depth.astype(np.float32)


def forward_warp_depth(depth: np.ndarray, disparity: np.ndarray, max_span: int = 4,
                       tolerance: float = SURFACE_TOLERANCE) -> np.ndarray:
    """Left z-depth [H, W] (+inf = none) → right z-depth [H, W], left pixel x landing at x − disparity.

    z is unchanged by a pure x-translation. Every pair of horizontal neighbours on one surface
    (depths within `tolerance`, in the same order in the right view, at most `max_span` px apart
    there) is rasterised with inverse depth interpolated linearly, so slanted surfaces leave no
    cracks; valid pixels in no such pair are splatted to their nearest right pixel. A z-buffer
    keeps the nearest surface; right pixels nothing lands on are +inf.
    """
    h, w = depth.shape
    valid = np.isfinite(depth) & (depth > 0) & np.isfinite(disparity)
    z = np.where(valid, depth, 1.0).astype(np.float64)
    right_x = np.arange(w, dtype=np.float64)[None, :] - np.where(valid, disparity, 0.0)
    za, zb, xa, xb = z[:, :-1], z[:, 1:], right_x[:, :-1], right_x[:, 1:]
    pair = valid[:, :-1] & valid[:, 1:] & (np.abs(za - zb) <= tolerance * np.minimum(za, zb))
    pair &= (xb >= xa) & (xb - xa <= max_span)  # a fold (xb < xa) faces away from the right camera
    out = np.full((h, w), np.inf)
    rows, cols = np.nonzero(pair)
    xa, xb, ia, ib = xa[rows, cols], xb[rows, cols], 1.0 / za[rows, cols], 1.0 / zb[rows, cols]
    first = np.ceil(xa).astype(np.int64)
    for k in range(max_span + 1):
        c = first + k
        ok = (c <= xb) & (c >= 0) & (c < w)
        t = (c - xa) / np.where(xb > xa, xb - xa, 1.0)
        np.minimum.at(out, (rows[ok], c[ok]), 1.0 / (ia + t * (ib - ia))[ok])
    in_pair = np.zeros_like(valid)
    in_pair[:, :-1] |= pair
    in_pair[:, 1:] |= pair
    rows, cols = np.nonzero(valid & ~in_pair)  # isolated samples: splat to the nearest pixel
    target = np.round(right_x[rows, cols]).astype(np.int64)
    ok = (target >= 0) & (target < w)
    np.minimum.at(out, (rows[ok], target[ok]), z[rows[ok], cols[ok]])
    return out.astype(np.float32)


def read_motorcycle() -> dict:
    """The bundled pair: `left`, `right` [H, W, 3] uint8 RGB and `disparity` [H, W] float32."""
    data_dir = skimage_data_dir()
    images = []
    for name in MOTORCYCLE_FILES[:2]:
        bgr = cv2.imread(str(data_dir / name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise UserError(f"cannot decode {data_dir / name}")
        images.append(np.ascontiguousarray(bgr[..., ::-1]))
    with np.load(data_dir / MOTORCYCLE_FILES[2]) as npz:
        disparity = npz["arr_0"].astype(np.float32)
    if not (images[0].shape == images[1].shape and images[0].shape[:2] == disparity.shape):
        raise UserError(f"{data_dir}: Motorcycle images {images[0].shape}, {images[1].shape} and "
                        f"disparity {disparity.shape} differ in size")
    return {"left": images[0], "right": images[1], "disparity": disparity}


def write_motorcycle_scene(out_dir, scene: str = "motorcycle") -> Path:
    """Write the Motorcycle pair as the ETH3D scene `<out_dir>/<scene>`; returns its folder.

    Built in a temporary folder and renamed into place (an existing scene is replaced).
    """
    pair = read_motorcycle()
    height, width = pair["disparity"].shape
    depth_left = disparity_to_depth(pair["disparity"], MOTORCYCLE_FOCAL, MOTORCYCLE_BASELINE_M, MOTORCYCLE_DOFFS)
    depth_right = forward_warp_depth(depth_left, pair["disparity"])

    # COLMAP pixel convention: the centre of the top-left pixel is (0.5, 0.5).
    cx, cy = MOTORCYCLE_CX + 0.5, MOTORCYCLE_CY + 0.5
    f = MOTORCYCLE_FOCAL
    cameras = [Camera(0, "PINHOLE", width, height, (f, f, cx, cy)),
               Camera(1, "PINHOLE", width, height, (f, f, cx + MOTORCYCLE_DOFFS, cy))]
    translations = [np.zeros(3), np.array([-MOTORCYCLE_BASELINE_M, 0.0, 0.0])]

    final = Path(out_dir) / scene
    with atomic_dir(final) as tmp:
        _write_pair_files(tmp, pair, depth_left, depth_right, cameras, translations)
    return final


def _write_pair_files(tmp: Path, pair: dict, depth_left, depth_right, cameras, translations) -> None:
    identity = np.array([1.0, 0.0, 0.0, 0.0])
    for name, rgb, depth in zip(VIEW_NAMES, (pair["left"], pair["right"]), (depth_left, depth_right)):
        write_jpeg(tmp / "images" / "dslr_images" / name, rgb)
        write_jpeg(tmp / "images" / "dslr_images_undistorted" / name, rgb)
        path = tmp / "ground_truth_depth" / "dslr_images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        depth.astype("<f4").tofile(path)
    for folder, subdir in (("dslr_calibration_jpg", "dslr_images"),
                           ("dslr_calibration_undistorted", "dslr_images_undistorted")):
        images = [Image(view + 1, identity, t, view, f"{subdir}/{name}")
                  for view, (name, t) in enumerate(zip(VIEW_NAMES, translations))]
        write_cameras(tmp / folder / "cameras.txt", cameras)
        write_images(tmp / folder / "images.txt", images)
        write_points3d(tmp / folder / "points3D.txt", [])


@cli_main
def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="dataset root (the scene is written under it)")
    parser.add_argument("--scene", default="motorcycle", help="scene folder name")
    args = parser.parse_args(argv)
    if not args.scene or Path(args.scene).name != args.scene or args.scene.startswith("."):
        raise UserError(f"--scene must be a plain folder name, got {args.scene!r}")
    path = write_motorcycle_scene(args.out, args.scene)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
