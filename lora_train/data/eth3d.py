"""ETH3D high-res multi-view scenes: image and dense laser depth on one undistorted pinhole camera.

ETH3D's ground-truth depth (`ground_truth_depth/dslr_images/*.JPG`: raw little-endian float32,
+inf = no depth, z-depth) and its masks (`masks_for_images/dslr_images/*.png`: 0 normal, 1 obs
mask, 2 no ground truth) lie on the grid of the *distorted* images (THIN_PRISM_FISHEYE calibration
in `dslr_calibration_jpg/`). `ETH3DScene.load_view` brings image, depth and mask onto one pinhole
camera through the exact distortion model:

- The output camera keeps the distorted camera's pose and focal ratio, its principal point is the
  image centre, its width is `width` and its height a multiple of 14: an isotropic scale of the
  largest principal-point-centred rectangle that lies inside the distorted image (no black borders).
- Every output pixel's ray is projected into the distorted grid. Depth keeps its z (same camera
  frame): inverse depth is interpolated bilinearly where the neighbouring GT pixels are valid
  and lie on one plane, whatever its slope (grazing ground, facades seen from the side); at
  creases, hole borders and sparse laser returns the nearest GT pixel is taken if its valid
  neighbours agree within `DEPTH_EDGE_TOLERANCE`; pixels straddling a step or a steep crease are
  invalid. Dense ground truth stays dense; nothing is interpolated across edges.
- The image is decoded once at a reduced scale (JPEG DCT scaling, then area filtering) and
  resampled through the same map, so image and depth align by construction.

Results are cached at training resolution in a content-keyed on-disk cache (file sizes and
mtimes, calibration, width, options), so a 93 MiB depth map is read once; loader workers and
concurrent trials on one host share it (whole entries only, each filled by one process).
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lora_train.data import cameras as camera_models
from lora_train.data.cache import cache_dir as cache_dir_of
from lora_train.data.cameras import SUPPORTED_MODELS, thin_prism_fisheye_distort  # noqa: F401 (re-export)
from lora_train.data.colmap import Camera, Image, read_cameras, read_images
from lora_train.errors import UserError
from vggt_common.files import atomic_write, file_lock

DEPTH_EDGE_TOLERANCE = 0.03  # off a plane, neighbouring GT depths further apart than 3 % are an edge
DEPTH_PLANARITY = 1e-3  # inverse-depth neighbourhoods further from a plane than this (relative) ...
DEPTH_CURVATURE = 0.25  # ... plus this fraction of the local slope are a crease or a step
PATCH = 14
CACHE_VERSION = 2  # 2: planar neighbourhoods of any slope interpolated; nearest checked against its 3x3
_JPEG_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}


@dataclass(frozen=True)
class OutputCamera:
    """The undistorted pinhole camera a view is resampled onto, and the map into a source grid.

    Attributes:
        intrinsics: [3, 3] float64, OpenCV pixel-centre convention, principal point at the centre.
        map_x, map_y: [H, W] float64 source-array coordinates (top-left pixel centre at 0, 0).
        source_per_pixel: source pixels per output pixel (> 1 means downsampling).
    """

    width: int
    height: int
    intrinsics: np.ndarray
    map_x: np.ndarray
    map_y: np.ndarray
    source_per_pixel: float


def _inside(camera: Camera, half_x: float, half_y: float) -> bool:
    """Does the normalised rectangle [-half_x, half_x] x [-half_y, half_y] project inside the image?"""
    t = np.linspace(-1.0, 1.0, 129)
    x = np.concatenate([t * half_x, t * half_x, np.full_like(t, -half_x), np.full_like(t, half_x)])
    y = np.concatenate([np.full_like(t, -half_y), np.full_like(t, half_y), t * half_y, t * half_y])
    px, py = camera_models.project(camera.model, camera.params, x, y)
    ok = np.isfinite(px) & np.isfinite(py)
    ok &= (px >= 0.5) & (px <= camera.width - 0.5) & (py >= 0.5) & (py <= camera.height - 0.5)
    return bool(ok.all())


def valid_half_extent(camera: Camera) -> tuple[float, float]:
    """Largest principal-point-centred rectangle (normalised half extents) inside the image.

    The rectangle has the aspect of the part of the image around the principal point; it is found
    by bisection on the exact projection of its border.
    """
    fx, fy, cx, cy = camera_models.focal_and_center(camera.model, camera.params)
    ax = min(cx, camera.width - cx) / fx
    ay = min(cy, camera.height - cy) / fy
    lo, hi = 0.0, 4.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if _inside(camera, mid * ax, mid * ay):
            lo = mid
        else:
            hi = mid
    return lo * ax, lo * ay


def output_camera(camera: Camera, width: int, height: int | None = None, source: Camera | None = None) -> OutputCamera:
    """The pinhole camera of `width` (and `height`, default the largest multiple of 14 <= width).

    `camera` (the distorted calibration) defines the field of view; `source` is the calibration of
    the grid to sample from (default `camera` itself).
    """
    source = source or camera
    fx, fy, _, _ = camera_models.focal_and_center(camera.model, camera.params)
    half_x, half_y = valid_half_extent(camera)
    scale = width / (2 * half_x * fx)  # output pixels per distorted pixel, isotropic
    fx_out, fy_out = fx * scale, fy * scale
    max_height = min(int(2 * half_y * fy_out) // PATCH * PATCH, width)
    if height is None:
        height = max_height
    if height < PATCH or height > max_height or height % PATCH:
        raise UserError(f"height {height} must be a multiple of {PATCH} in [{PATCH}, {max_height}] for width {width}")
    cx_out, cy_out = (width - 1) / 2, (height - 1) / 2
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    px, py = camera_models.project(source.model, source.params, (cols - cx_out) / fx_out, (rows - cy_out) / fy_out)
    intrinsics = np.array([[fx_out, 0, cx_out], [0, fy_out, cy_out], [0, 0, 1.0]])
    source_fx = camera_models.focal_and_center(source.model, source.params)[0]
    return OutputCamera(width, height, intrinsics, px - 0.5, py - 0.5, source_fx / fx_out)


def sample_depth(depth: np.ndarray, map_x: np.ndarray, map_y: np.ndarray,
                 tolerance: float = DEPTH_EDGE_TOLERANCE, planarity: float = DEPTH_PLANARITY) -> np.ndarray:
    """Resample a z-depth map [h, w] (inf/NaN/<=0 invalid) at array coordinates → [H, W], 0 invalid.

    Inverse depth (affine over a plane) is interpolated bilinearly where the 4x4 neighbourhood is
    valid and planar (second differences below `planarity` · inverse depth plus `DEPTH_CURVATURE`
    · first differences), however steep the plane: depth may change by far more than `tolerance`
    per GT pixel on ground seen at a grazing angle. Elsewhere (creases, steps, hole borders,
    sparse returns) the nearest GT pixel is kept if the valid pixels of the 2x2 around the sample
    agree within `tolerance` and, where that 2x2 has a hole, so do the nearest pixel's valid
    neighbours (its error then stays within `tolerance` on a steep surface too); otherwise 0.
    """
    h, w = depth.shape
    x0 = np.clip(np.floor(map_x).astype(np.int64), 0, w - 2)
    y0 = np.clip(np.floor(map_y).astype(np.int64), 0, h - 2)
    wx, wy = np.clip(map_x - x0, 0, 1), np.clip(map_y - y0, 0, 1)
    # 4x4 patch around the sample, rows/cols -1..2 relative to (y0, x0); index [4 * dy + dx]
    offsets = np.arange(-1, 3)
    rows = np.clip(y0[None] + offsets[:, None, None], 0, h - 1)
    cols = np.clip(x0[None] + offsets[:, None, None], 0, w - 1)
    z = depth[rows[:, None], cols[None, :]].reshape(16, *map_x.shape).astype(np.float64)
    valid = np.isfinite(z) & (z > 0)
    inv = np.where(valid, 1.0 / np.where(valid, z, 1.0), 0.0)
    inner = [5, 6, 9, 10]  # the 2x2 block that surrounds the sample
    zi, vi, ii = z[inner], valid[inner], inv[inner]
    # A plane's inverse depth is affine in undistorted coordinates; in the distorted grid its
    # second differences stay a small fraction of its first differences. Creases and steps do not.
    floor = planarity * ii.mean(0)
    diagonal = np.maximum(np.abs(ii[0] - ii[3]), np.abs(ii[1] - ii[2]))
    planar = np.abs(ii[0] + ii[3] - ii[1] - ii[2]) <= floor + planarity * diagonal
    for r in (1, 2):
        for c in (1, 2):
            for step in (1, 4):  # along x, along y
                a, b, d = inv[4 * r + c - step], inv[4 * r + c], inv[4 * r + c + step]
                slope = np.maximum(np.abs(b - a), np.abs(d - b))
                planar &= np.abs(a - 2 * b + d) <= floor + DEPTH_CURVATURE * slope
    use_bilinear = valid.all(0) & planar
    weights = np.stack([(1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy])
    with np.errstate(divide="ignore"):
        bilinear = 1.0 / np.sum(weights * ii, axis=0)

    def agree(zs, vs, z_ref):  # every valid depth in zs within tolerance of z_ref
        return np.all(~vs | ((zs <= z_ref * (1 + tolerance)) & (z_ref <= zs * (1 + tolerance))), axis=0)

    nearest = (wx >= 0.5).astype(np.int64) + 2 * (wy >= 0.5).astype(np.int64)  # 0..3 in `inner`
    z_near = np.take_along_axis(zi, nearest[None], 0)[0]
    near_valid = np.take_along_axis(vi, nearest[None], 0)[0]
    zmin = np.min(np.where(vi, zi, np.inf), axis=0)
    consistent = agree(zi, vi, zmin)
    # the nearest pixel's 3x3 lies inside the 4x4 patch: patch index of its top-left, plus offsets
    corner = (nearest % 2) + 4 * (nearest // 2)
    around = corner[None] + np.array([0, 1, 2, 4, 5, 6, 8, 9, 10])[:, None, None]
    hole_border_ok = agree(np.take_along_axis(z, around, 0), np.take_along_axis(valid, around, 0), z_near)
    use_nearest = ~use_bilinear & near_valid & consistent & (vi.all(0) | hole_border_ok)
    out = np.where(use_bilinear, bilinear, np.where(use_nearest, z_near, 0.0))
    return np.nan_to_num(out, nan=0.0, posinf=0.0).astype(np.float32)


def _file_stamp(path: Path) -> list:
    try:
        st = path.stat()
    except FileNotFoundError:
        return [str(path), None]
    return [str(path), st.st_size, st.st_mtime_ns]


class ETH3DScene:
    """One ETH3D scene in the merged archive tree `<root>/<scene>/...`.

    Args:
        root: folder holding `<scene>/` (all archives extracted into one place).
        scene: scene name, e.g. "courtyard" or "facade_000".
        images_root, depth_root, masks_root, calibration_root: roots of separately extracted
            archives (`dslr_jpg`/`dslr_undistorted`, `dslr_depth`, `dslr_occlusion`); default `root`.
        exclude_obs_mask: also drop mask value 1 (reflections, flares) from the valid pixels;
            value 2 is always dropped.
        image_source: "distorted" (images/dslr_images, resampled with the depth's map) or
            "undistorted" (images/dslr_images_undistorted with its PINHOLE calibration).
        cache_dir: on-disk cache of resampled views; None = the `views/` folder of the cache
            root (`lora_train.data.cache`), False = off.
        fast_decode: decode JPEGs at a reduced scale when downsampling (False = full decode).
    """

    def __init__(self, root, scene: str, *, images_root=None, depth_root=None, masks_root=None,
                 calibration_root=None, exclude_obs_mask: bool = True, image_source: str = "distorted",
                 cache_dir=None, fast_decode: bool = True):
        if image_source not in ("distorted", "undistorted"):
            raise UserError(f"image_source must be 'distorted' or 'undistorted', got {image_source!r}")
        root = Path(root)
        self.scene = scene
        self.exclude_obs_mask = exclude_obs_mask
        self.image_source = image_source
        self.fast_decode = fast_decode
        self.cache_dir = None if cache_dir is False else Path(cache_dir) if cache_dir else cache_dir_of("views")
        self._images_dir = Path(images_root or root) / scene / "images"
        self._depth_dir = Path(depth_root or root) / scene / "ground_truth_depth"
        self._masks_dir = Path(masks_root or root) / scene / "masks_for_images"
        calib = Path(calibration_root or root) / scene
        self.cameras_path = calib / "dslr_calibration_jpg" / "cameras.txt"
        self.images_path = calib / "dslr_calibration_jpg" / "images.txt"
        self.cameras = read_cameras(self.cameras_path)
        self.images: dict[str, Image] = {}
        for image in read_images(self.images_path).values():
            self._check_camera(image, self.cameras, self.cameras_path, self.images_path)
            self.images[image.name] = image
        self.view_names = list(self.images)
        self._source: dict[str, tuple[Image, Camera]] = {}
        if image_source == "undistorted":
            ucal = calib / "dslr_calibration_undistorted"
            ucams = read_cameras(ucal / "cameras.txt")
            by_base = {Path(im.name).name: im for im in read_images(ucal / "images.txt").values()}
            for name in self.view_names:
                uimage = by_base.get(Path(name).name)
                if uimage is None:
                    raise UserError(f"{ucal / 'images.txt'}: no undistorted entry for {name}")
                self._check_camera(uimage, ucams, ucal / "cameras.txt", ucal / "images.txt")
                self._source[name] = (uimage, ucams[uimage.camera_id])
        self._output_cameras: dict = {}

    @staticmethod
    def _check_camera(image: Image, cameras: dict, cameras_path: Path, images_path: Path) -> None:
        camera = cameras.get(image.camera_id)
        if camera is None:
            raise UserError(f"{images_path}: image {image.name} uses camera {image.camera_id}, absent from {cameras_path}")
        if camera.model not in SUPPORTED_MODELS:
            raise UserError(f"{cameras_path}: camera {camera.camera_id} has model {camera.model}, "
                            f"which this loader does not undistort (supported: {', '.join(SUPPORTED_MODELS)})")

    # ------------------------------------------------------------------ cameras

    def default_height(self, width: int = 518) -> int:
        """Common output height for all views of the scene at `width` (multiple of 14)."""
        used = {im.camera_id for im in self.images.values()}
        return min(self.output_camera(self.cameras[c], width).height for c in sorted(used))

    def output_camera(self, camera: Camera, width: int, height: int | None = None, source: Camera | None = None) -> OutputCamera:
        key = (camera, width, height, source)
        if key not in self._output_cameras:
            self._output_cameras[key] = output_camera(camera, width, height, source)
        return self._output_cameras[key]

    # ------------------------------------------------------------------ paths

    def image_path(self, name: str) -> Path:
        if self.image_source == "undistorted":
            return self._images_dir / self._source[name][0].name
        return self._images_dir / name

    def depth_path(self, name: str) -> Path:
        return self._depth_dir / name

    def mask_path(self, name: str) -> Path:
        return (self._masks_dir / name).with_suffix(".png")

    # ------------------------------------------------------------------ loading

    def load_view(self, name: str, width: int = 518, height: int | None = None) -> dict:
        """One view on its undistorted pinhole camera.

        Returns:
            dict with `image` [H, W, 3] uint8 RGB, `depth` [H, W] float32 metres (0 = invalid),
            `valid` [H, W] bool, `intrinsics` [3, 3] float64 (OpenCV pixel centres, principal point
            at ((W-1)/2, (H-1)/2)), `extrinsics` [3, 4] float64 camera-from-world, `name`.
        """
        if name not in self.images:
            raise UserError(f"view {name!r} is not listed in {self.images_path}")
        if width < PATCH or width % PATCH:
            raise UserError(f"width {width} must be a positive multiple of {PATCH}")
        height = height or self.default_height(width)
        image = self.images[name]
        camera = self.cameras[image.camera_id]
        out = self.output_camera(camera, width, height)
        cached = self._cached_resample(name, camera, out)
        return {
            "image": cached["image"],
            "depth": cached["depth"],
            "valid": cached["valid"],
            "intrinsics": out.intrinsics.copy(),
            "extrinsics": image.extrinsics(),
            "name": name,
        }

    def _resample(self, name: str, camera: Camera, out: OutputCamera) -> dict:
        if self.image_source == "undistorted":
            source_camera = self._source[name][1]
            image_map = self.output_camera(camera, out.width, out.height, source_camera)
        else:
            source_camera, image_map = camera, out
        image = self._read_image(self.image_path(name), source_camera, image_map)
        depth = sample_depth(self._read_depth(name, camera), out.map_x, out.map_y)
        bad = self._read_bad_mask(name, camera)
        if bad is not None:
            if out.source_per_pixel > 1.5:  # any masked pixel under the output pixel's footprint
                k = int(np.ceil(out.source_per_pixel)) | 1
                bad = cv2.dilate(bad, np.ones((k, k), np.uint8))
            cols = np.clip(np.round(out.map_x).astype(np.int64), 0, camera.width - 1)
            rows = np.clip(np.round(out.map_y).astype(np.int64), 0, camera.height - 1)
            depth[bad[rows, cols] > 0] = 0.0
        return {"image": image, "depth": depth, "valid": depth > 0}

    def _read_image(self, path: Path, camera: Camera, out: OutputCamera) -> np.ndarray:
        if not path.is_file():
            raise UserError(f"image {path} listed in {self.images_path} is missing")
        reduction = 1
        if self.fast_decode:
            reduction = max(k for k in _JPEG_REDUCED if k <= max(out.source_per_pixel, 1.0))
        bgr = cv2.imread(str(path), _JPEG_REDUCED[reduction])
        if bgr is None:
            raise UserError(f"cannot decode image {path}")
        expected = (-(-camera.height // reduction), -(-camera.width // reduction))
        if bgr.shape[:2] != expected:
            raise UserError(f"image {path} is {bgr.shape[1] * reduction}x{bgr.shape[0] * reduction}, "
                            f"calibration says {camera.width}x{camera.height}")
        scale_x = scale_y = 1.0 / reduction
        residual = out.source_per_pixel / reduction
        if residual > 1.25:
            h, w = bgr.shape[:2]
            size = (max(1, round(w / residual)), max(1, round(h / residual)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            scale_x, scale_y = scale_x * size[0] / w, scale_y * size[1] / h
        map_x = ((out.map_x + 0.5) * scale_x - 0.5).astype(np.float32)
        map_y = ((out.map_y + 0.5) * scale_y - 0.5).astype(np.float32)
        bgr = cv2.remap(bgr, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return np.ascontiguousarray(bgr[..., ::-1])

    def _read_depth(self, name: str, camera: Camera) -> np.ndarray:
        path = self.depth_path(name)
        if not path.is_file():
            raise UserError(f"ground-truth depth {path} for {name} is missing")
        expected = 4 * camera.width * camera.height
        size = path.stat().st_size
        if size != expected:
            raise UserError(f"depth map {path} has {size} bytes, expected {expected} "
                            f"(float32 {camera.width}x{camera.height} from {self.cameras_path})")
        return np.fromfile(path, dtype="<f4").reshape(camera.height, camera.width)

    def _read_bad_mask(self, name: str, camera: Camera) -> np.ndarray | None:
        """uint8 [h, w]: 1 where the mask excludes the pixel; None when the image has no mask file."""
        path = self.mask_path(name)
        if not path.is_file():
            return None
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.ndim != 2 or mask.dtype != np.uint8:
            raise UserError(f"mask {path} is not a single-channel 8-bit PNG")
        if mask.shape != (camera.height, camera.width):
            raise UserError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, expected "
                            f"{camera.width}x{camera.height} (the distorted image size)")
        if mask.max() > 2:
            raise UserError(f"mask {path} has value {int(mask.max())}; ETH3D masks hold only 0, 1, 2")
        bad = mask == 2
        if self.exclude_obs_mask:
            bad |= mask == 1
        return bad.astype(np.uint8)

    # ------------------------------------------------------------------ cache

    def _cache_path(self, name: str, camera: Camera, width: int, height: int) -> Path | None:
        if self.cache_dir is None:
            return None
        files = [self.image_path(name), self.depth_path(name), self.mask_path(name)]
        if self.image_source == "undistorted":
            files.append(self.images_path.parent.parent / "dslr_calibration_undistorted" / "cameras.txt")
        key = json.dumps([CACHE_VERSION, width, height, self.exclude_obs_mask, self.image_source,
                          self.fast_decode, DEPTH_EDGE_TOLERANCE, DEPTH_PLANARITY, DEPTH_CURVATURE, camera.model, camera.params,
                          camera.width, camera.height, [_file_stamp(f) for f in files]])
        digest = hashlib.sha1(key.encode()).hexdigest()[:20]
        return self.cache_dir / self.scene / f"{Path(name).stem}-{width}x{height}-{digest}.bin"

    def _cached_resample(self, name: str, camera: Camera, out: OutputCamera) -> dict:
        """`_resample` through the cache. Loader workers and trials on one host share it: entries
        appear whole (atomic rename) and one process fills an entry while the others wait for it."""
        path = self._cache_path(name, camera, out.width, out.height)
        if path is None:
            return self._resample(name, camera, out)
        view = self._cache_read(path, out.width, out.height)
        if view is None:
            with file_lock(path.with_name(f".{path.name}.lock")):
                view = self._cache_read(path, out.width, out.height)  # filled while we waited
                if view is None:
                    view = self._resample(name, camera, out)
                    self._cache_write(path, view)
        return view

    @staticmethod
    def _cache_read(path: Path, width: int, height: int) -> dict | None:
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except FileNotFoundError:
            return None
        if data.size != height * width * 7:  # damaged entry: recomputed and overwritten
            return None
        image = data[: height * width * 3].reshape(height, width, 3)
        depth = data[height * width * 3 :].view("<f4").reshape(height, width)
        return {"image": image, "depth": depth, "valid": depth > 0}

    @staticmethod
    def _cache_write(path: Path, view: dict) -> None:
        """One raw file per view: RGB uint8 bytes, then little-endian float32 depth."""
        atomic_write(path, np.ascontiguousarray(view["image"], dtype=np.uint8).tobytes()
                     + np.ascontiguousarray(view["depth"], dtype="<f4").tobytes())
