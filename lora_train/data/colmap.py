"""COLMAP text models (cameras.txt, images.txt, points3D.txt) as ETH3D ships them.

Handles what real ETH3D files contain: 3- or 4-line `#` headers, empty POINTS2D lines (images.txt
is read by two-line parity, never by skipping blank lines), negative QW (quaternions are
normalised), non-contiguous ids and NAMEs with a subfolder (`dslr_images/DSC_0307.JPG`).
Writers produce the same layout (ETH3D's header counts), atomically.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lora_train.data.cameras import CAMERA_MODEL_NUM_PARAMS, quaternion_to_rotation
from lora_train.errors import UserError
from vggt_common.files import atomic_write


@dataclass(frozen=True)
class Camera:
    """One COLMAP camera; `params` in COLMAP order and pixel convention."""

    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass
class Image:
    """One registered image: world-to-camera pose `x_cam = R(qvec) x_world + tvec`.

    Attributes:
        qvec: [4] unit Hamilton quaternion (w, x, y, z).
        tvec: [3] translation, metres.
        xys: [N, 2] keypoints in COLMAP pixels.
        point3d_ids: [N] int64, -1 where a keypoint has no 3D point.
    """

    image_id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3d_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))

    def rotation(self) -> np.ndarray:
        """[3, 3] camera-from-world rotation."""
        return quaternion_to_rotation(self.qvec)

    def extrinsics(self) -> np.ndarray:
        """[3, 4] float64 camera-from-world `[R | t]` (OpenCV axes)."""
        return np.concatenate([self.rotation(), self.tvec.reshape(3, 1)], axis=1)

    def center(self) -> np.ndarray:
        """[3] camera centre in world coordinates, `-Rᵀ t`."""
        return -self.rotation().T @ self.tvec


@dataclass
class Point3D:
    """One SfM point with its track (image ids and 0-based POINTS2D indices)."""

    point3d_id: int
    xyz: np.ndarray
    rgb: np.ndarray
    error: float
    image_ids: np.ndarray
    point2d_idxs: np.ndarray


def _read_lines(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing calibration file {path}")
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def _numbers(path, lineno, tokens, kind=float):
    try:
        return [kind(t) for t in tokens]
    except ValueError:
        raise UserError(f"{path}:{lineno}: expected numbers, got {' '.join(tokens)[:80]!r}") from None


def _data_lines(path: Path):
    """(line number, tokens) of every non-blank, non-comment line of a COLMAP text file."""
    for lineno, line in enumerate(_read_lines(path), start=1):
        tokens = line.split()
        if tokens and not tokens[0].startswith("#"):
            yield lineno, tokens


def read_cameras(path) -> dict[int, Camera]:
    """cameras.txt → {camera_id: Camera}; unknown models or bad lines raise `UserError`."""
    cameras = {}
    for lineno, tokens in _data_lines(path):
        if len(tokens) < 4:
            raise UserError(f"{path}:{lineno}: camera line needs CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]")
        model = tokens[1]
        if model not in CAMERA_MODEL_NUM_PARAMS:
            raise UserError(f"{path}:{lineno}: unknown camera model {model!r}")
        camera_id, width, height = _numbers(path, lineno, [tokens[0], tokens[2], tokens[3]], int)
        params = _numbers(path, lineno, tokens[4:])
        if len(params) != CAMERA_MODEL_NUM_PARAMS[model]:
            raise UserError(
                f"{path}:{lineno}: camera model {model} needs {CAMERA_MODEL_NUM_PARAMS[model]} "
                f"parameters, got {len(params)}"
            )
        cameras[camera_id] = Camera(camera_id, model, width, height, tuple(params))
    return cameras


def read_images(path) -> dict[int, Image]:
    """images.txt → {image_id: Image} in file order.

    Data lines come in pairs (pose line, POINTS2D line); the POINTS2D line may be empty, so blank
    lines are only skipped where a pose line is expected.
    """
    images = {}
    lines = _read_lines(path)
    lineno = 0
    while lineno < len(lines):
        line = lines[lineno]
        lineno += 1
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if len(tokens) < 10:
            raise UserError(
                f"{path}:{lineno}: image line needs IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME"
            )
        image_id = _numbers(path, lineno, tokens[:1], int)[0]
        pose = _numbers(path, lineno, tokens[1:8])
        camera_id = _numbers(path, lineno, tokens[8:9], int)[0]
        name = " ".join(tokens[9:])
        qvec = np.array(pose[:4])
        norm = np.linalg.norm(qvec)
        if not np.isfinite(norm) or norm < 1e-8:
            raise UserError(f"{path}:{lineno}: quaternion of image {name} has zero length")
        points_line = lines[lineno] if lineno < len(lines) else ""
        lineno += 1
        values = points_line.split()
        if len(values) % 3:
            raise UserError(f"{path}:{lineno}: POINTS2D needs (X, Y, POINT3D_ID) triplets")
        triplets = np.array(_numbers(path, lineno, values), dtype=np.float64).reshape(-1, 3)
        images[image_id] = Image(
            image_id=image_id,
            qvec=qvec / norm,
            tvec=np.array(pose[4:7]),
            camera_id=camera_id,
            name=name,
            xys=triplets[:, :2],
            point3d_ids=triplets[:, 2].astype(np.int64),
        )
    return images


def read_points3d(path) -> dict[int, Point3D]:
    """points3D.txt → {point3d_id: Point3D}."""
    points = {}
    for lineno, tokens in _data_lines(path):
        if len(tokens) < 8 or (len(tokens) - 8) % 2:
            raise UserError(f"{path}:{lineno}: point line needs ID X Y Z R G B ERROR (IMAGE_ID, POINT2D_IDX)*")
        values = _numbers(path, lineno, tokens)
        track = np.array(values[8:], dtype=np.int64).reshape(-1, 2)
        point_id = int(values[0])
        points[point_id] = Point3D(
            point3d_id=point_id,
            xyz=np.array(values[1:4]),
            rgb=np.array(values[4:7], dtype=np.uint8),
            error=values[7],
            image_ids=track[:, 0],
            point2d_idxs=track[:, 1],
        )
    return points




def _fmt(x: float) -> str:
    return f"{x:.10g}"


def write_cameras(path, cameras: list[Camera]) -> None:
    """cameras.txt with ETH3D's 3-line header."""
    lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(cameras)}",
    ]
    for cam in cameras:
        params = " ".join(_fmt(p) for p in cam.params)
        lines.append(f"{cam.camera_id} {cam.model} {cam.width} {cam.height} {params}")
    atomic_write(path, "\n".join(lines) + "\n")


def write_images(path, images: list[Image]) -> None:
    """images.txt with ETH3D's 4-line header; images without keypoints get an empty line."""
    num_obs = sum(len(im.point3d_ids) for im in images)
    mean_obs = num_obs / max(len(images), 1)
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(images)}, mean observations per image: {mean_obs:g}",
    ]
    for im in images:
        pose = " ".join(_fmt(v) for v in [*im.qvec, *im.tvec])
        lines.append(f"{im.image_id} {pose} {im.camera_id} {im.name}")
        lines.append(
            " ".join(f"{_fmt(x)} {_fmt(y)} {int(pid)}" for (x, y), pid in zip(im.xys, im.point3d_ids))
        )
    atomic_write(path, "\n".join(lines) + "\n")


def write_points3d(path, points: list[Point3D]) -> None:
    """points3D.txt with ETH3D's 3-line header."""
    mean_track = np.mean([len(p.image_ids) for p in points]) if points else 0.0
    lines = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        f"# Number of points: {len(points)}, mean track length: {mean_track:g}",
    ]
    for p in points:
        xyz = " ".join(_fmt(v) for v in p.xyz)
        rgb = " ".join(str(int(c)) for c in p.rgb)
        track = " ".join(f"{int(i)} {int(j)}" for i, j in zip(p.image_ids, p.point2d_idxs))
        lines.append(f"{p.point3d_id} {xyz} {rgb} {_fmt(p.error)} {track}")
    atomic_write(path, "\n".join(lines) + "\n")
