"""Synthetic scenes written byte-for-byte in ETH3D's high-res multi-view formats.

Each scene is real 3D geometry (textured rectangles and boxes) ray cast through exact cameras, so
images, ground-truth depth, masks, SfM tracks and the laser scan all agree. Per scene it writes:

    <scene>/images/dslr_images/DSC_xxxx.JPG                 distorted JPEGs (THIN_PRISM_FISHEYE)
    <scene>/images/dslr_images_undistorted/DSC_xxxx.JPG     PINHOLE renders on a larger canvas
    <scene>/dslr_calibration_jpg/{cameras,images,points3D}.txt
    <scene>/dslr_calibration_undistorted/{cameras,images,points3D}.txt
    <scene>/ground_truth_depth/dslr_images/DSC_xxxx.JPG     raw little-endian float32 z, +inf = none
    <scene>/masks_for_images/dslr_images/DSC_xxxx.png       uint8 {0,1,2}; absent when all 0
    <scene>/dslr_scan_eval/scan1.ply, scan_alignment.mlp    binary float32 xyz (scanner frame)

Families: "facade" (building facades with window/door recesses, balconies, brick or plaster,
ground; the product's target domain) and "generic" (random textured boxes on a floor, to pretrain
a tiny base model). Output is deterministic for a given seed.

CLI: python -m lora_train.data.synthetic --out DIR --scenes N [--family facade|generic] [--seed S]
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from lora_train.data import cameras as camera_models
from lora_train.data.colmap import (
    Camera,
    Image,
    Point3D,
    write_cameras,
    write_images,
    write_points3d,
)
from lora_train.data.raycast import (
    Geometry,
    Material,
    Quad,
    RayCamera,
    cast,
    labels,
    shade,
)
from lora_train.errors import ArgumentParser, UserError, cli_main
from vggt_common.files import atomic_dir

FAMILIES = ("facade", "generic")
_FAMILY_CODE = {"facade": 1, "generic": 2}
JPEG_QUALITY = 95


@dataclass
class SyntheticScene:
    """A generated scene before writing: geometry, calibrated cameras and posed views."""

    name: str
    geometry: Geometry
    cameras: list[Camera]  # THIN_PRISM_FISHEYE, ids from 0
    undistorted_cameras: list[Camera]  # PINHOLE on a larger canvas, same ids
    view_names: list[str]  # "DSC_xxxx.JPG"
    image_ids: list[int]
    camera_ids: list[int]
    rotations: list[np.ndarray]  # camera-from-world
    translations: list[np.ndarray]

    def ray_camera(self, view: int, undistorted: bool = False) -> RayCamera:
        cams = self.undistorted_cameras if undistorted else self.cameras
        cam = cams[self.camera_ids[view]]
        return RayCamera(cam.model, cam.params, cam.width, cam.height, self.rotations[view], self.translations[view])


# --------------------------------------------------------------------------- geometry


def _quad(corner, edge_u, edge_v, material, label=0) -> Quad:
    return Quad(np.asarray(corner, float), np.asarray(edge_u, float), np.asarray(edge_v, float), material, label)


def _box(center, size, material, yaw=0.0, label=0, bottom=False) -> list[Quad]:
    """Axis-aligned (then yawed about +z) box as outward-facing rectangles."""
    c, s = np.cos(yaw), np.sin(yaw)
    ex, ey, ez = np.array([c, s, 0.0]) * size[0], np.array([-s, c, 0.0]) * size[1], np.array([0, 0, 1.0]) * size[2]
    o = np.asarray(center, float) - (ex + ey + ez) / 2
    quads = [
        _quad(o, ex, ez, material, label),  # front (-y)
        _quad(o + ey, ez, ex, material, label),  # back
        _quad(o, ez, ey, material, label),  # left
        _quad(o + ex, ey, ez, material, label),  # right
        _quad(o + ez, ex, ey, material, label),  # top
    ]
    if bottom:
        quads.append(_quad(o, ey, ex, material, label))
    return quads


def _wall_with_openings(x_range, z_range, openings, material) -> list[Quad]:
    """Wall in the plane y = 0 facing -y, minus rectangular openings (x0, x1, z0, z1)."""
    zs = sorted({z_range[0], z_range[1], *[o[2] for o in openings], *[o[3] for o in openings]})
    quads = []
    for z0, z1 in zip(zs[:-1], zs[1:]):
        holes = sorted((o[0], o[1]) for o in openings if o[2] <= z0 and o[3] >= z1)
        x = x_range[0]
        for h0, h1 in holes + [(x_range[1], x_range[1])]:
            if h0 > x + 1e-9:
                quads.append(_quad([x, 0, z0], [h0 - x, 0, 0], [0, 0, z1 - z0], material))
            x = max(x, h1)
    return quads


def _recess(x0, x1, z0, z1, depth, back_material, reveal_material, back_label=0) -> list[Quad]:
    """Back pane and four reveals of an opening in the wall y = 0 (recess towards +y)."""
    w, h = x1 - x0, z1 - z0
    return [
        _quad([x0, depth, z0], [w, 0, 0], [0, 0, h], back_material, back_label),
        _quad([x0, 0, z0], [0, depth, 0], [0, 0, h], reveal_material),
        _quad([x1, 0, z0], [0, 0, h], [0, depth, 0], reveal_material),
        _quad([x0, 0, z0], [w, 0, 0], [0, depth, 0], reveal_material),
        _quad([x0, 0, z1], [0, depth, 0], [w, 0, 0], reveal_material),
    ]


def _color(rng, lo=0.25, hi=0.85) -> tuple:
    return tuple(float(v) for v in rng.uniform(lo, hi, size=3))


def _facade_geometry(rng: np.random.Generator, seed: int) -> tuple[Geometry, dict]:
    width = float(rng.uniform(14, 20))
    floors = int(rng.integers(3, 5))
    floor_h = float(rng.uniform(2.9, 3.3))
    height = floors * floor_h + 0.6
    n_cols = int(rng.integers(4, 7))
    win_w, win_h = float(rng.uniform(1.0, 1.4)), float(rng.uniform(1.3, 1.7))
    recess = float(rng.uniform(0.3, 0.45))
    brick = rng.random() < 0.6
    materials = {
        "wall": Material("brick", {"color": _color(rng, 0.35, 0.7), "size": (0.42, 0.16)})
        if brick
        else Material("plaster", {"color": _color(rng, 0.55, 0.9), "noise_cell": 1.2}),
        "reveal": Material("plaster", {"color": (0.82, 0.8, 0.76)}),
        "glass": Material("glass", {"color": (0.12, 0.16, 0.2)}),
        "reflective": Material("glass", {"color": (0.7, 0.78, 0.86), "tint": (0.95, 0.95, 0.98)}),
        "door": Material("stripes", {"color": _color(rng, 0.2, 0.5), "color2": (0.15, 0.1, 0.08), "period": 0.12}),
        "ground": Material("tiles", {"color": (0.5, 0.5, 0.48), "size": (0.6, 0.6), "joint_color": (0.3, 0.3, 0.3)}),
        "concrete": Material("plaster", {"color": (0.66, 0.66, 0.64), "noise_cell": 0.5}),
        "railing": Material("stripes", {"color": (0.2, 0.22, 0.25), "color2": (0.75, 0.75, 0.78), "period": 0.15}),
        "neighbour": Material("plaster", {"color": _color(rng, 0.5, 0.85)}),
        "person": Material("noise", {"color": _color(rng, 0.1, 0.9), "color2": _color(rng, 0.1, 0.9), "period": 0.2}),
    }
    col_x = np.linspace(-width / 2, width / 2, n_cols + 2)[1:-1]
    openings, quads = [], []
    door_col = int(rng.integers(0, n_cols))
    # Reflections (mask 1) and a pedestrian (mask 2) sit at the left end: views of the right end
    # see nothing masked and, as in ETH3D, have no mask file.
    reflective = {int(f) * n_cols for f in rng.choice(floors, size=2, replace=False)}
    for floor in range(floors):
        for c, x in enumerate(col_x):
            if floor == 0 and c == door_col:
                rect = (x - 0.6, x + 0.6, 0.0, 2.3)
                quads += _recess(*rect, recess, "door", "reveal")
            else:
                z0 = floor * floor_h + 0.9
                rect = (x - win_w / 2, x + win_w / 2, z0, z0 + win_h)
                is_reflective = floor * n_cols + c in reflective
                quads += _recess(*rect, recess, "reflective" if is_reflective else "glass", "reveal", int(is_reflective))
            openings.append(rect)
            if floor > 0 and rng.random() < 0.35:  # balcony: slab and railing in front of the window
                z = floor * floor_h + 0.55
                quads += _box([x, -0.6, z], [win_w + 1.0, 1.2, 0.15], "concrete", bottom=True)
                quads.append(_quad([x - win_w / 2 - 0.5, -1.2, z + 0.075], [win_w + 1.0, 0, 0], [0, 0, 0.9], "railing"))
    quads += _wall_with_openings((-width / 2, width / 2), (0.0, height), openings, "wall")
    quads += _box([0, -0.25, height + 0.2], [width + 0.4, 0.5, 0.4], "concrete", bottom=True)  # cornice
    side = 1.0 if rng.random() < 0.5 else -1.0  # a neighbouring wall at one end
    xs = side * width / 2
    quads.append(_quad([xs, -7.0, 0], [0, 7.0, 0], [0, 0, height * 0.8], "neighbour"))
    quads.append(_quad([-40, -40, 0], [80, 0, 0], [0, 40.5, 0], "ground"))
    if rng.random() < 0.6:  # a pedestrian: moving object, ETH3D mask 2, no laser ground truth
        quads += _box([col_x[0] + rng.uniform(-0.5, 0.5), -2.5, 0.875], [0.5, 0.35, 1.75], "person",
                      yaw=float(rng.uniform(0, np.pi)), label=2)
    sun = np.array([rng.uniform(-0.6, 0.6), -0.7, 0.8])
    geometry = Geometry(quads, materials, sun=sun, seed=seed)
    return geometry, {"width": width, "height": height}


def _generic_geometry(rng: np.random.Generator, seed: int) -> tuple[Geometry, dict]:
    kinds = ("checker", "stripes", "dots", "noise", "plaster", "tiles")
    materials = {}
    quads = []
    def material(name):
        kind = kinds[int(rng.integers(len(kinds)))]
        materials[name] = Material(kind, {"color": _color(rng, 0.1, 0.95), "color2": _color(rng, 0.05, 0.95),
                                          "period": float(rng.uniform(0.2, 0.7)), "size": (0.5, 0.5)})
        return name
    quads.append(_quad([-40, -40, 0], [80, 0, 0], [0, 80, 0], material("floor")))
    for i in range(int(rng.integers(6, 11))):
        size = rng.uniform([0.4, 0.4, 0.3], [2.5, 2.5, 2.2])
        pos = rng.uniform(-3.5, 3.5, size=2)
        quads += _box([pos[0], pos[1], size[2] / 2], size, material(f"box{i}"), yaw=float(rng.uniform(0, np.pi)))
    for i in range(int(rng.integers(1, 3))):  # back walls
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle), 0.0])
        tangent = np.array([-direction[1], direction[0], 0.0])
        center = direction * rng.uniform(7, 10)
        quads.append(_quad(center - tangent * 6, tangent * 12, [0, 0, rng.uniform(3, 6)], material(f"wall{i}")))
    if rng.random() < 0.5:
        materials["person"] = Material("noise", {"color": _color(rng), "color2": _color(rng), "period": 0.2})
        quads += _box([*rng.uniform(-4, 4, size=2), 0.875], [0.5, 0.35, 1.75], "person", label=2)
    return Geometry(quads, materials, sun=np.array([0.3, 0.5, 0.8]), seed=seed), {}


# --------------------------------------------------------------------------- cameras


def _look_at(center: np.ndarray, target: np.ndarray, roll: float, up=np.array([0.0, 0.0, 1.0])):
    """Camera-from-world (R, t) for OpenCV axes (x right, y down, z forward)."""
    forward = target - center
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    c, s = np.cos(roll), np.sin(roll)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ rotation
    return rotation, -rotation @ center


def _facade_poses(rng, num_views, info):
    width = info["width"]
    xs = np.linspace(-0.32 * width, 0.32 * width, num_views) + rng.uniform(-0.3, 0.3, num_views)
    poses = []
    for x in xs:
        center = np.array([x, -rng.uniform(5.0, 8.5), rng.uniform(1.5, 2.6)])
        target = np.array([x + rng.uniform(-2.5, 2.5), 0.0, rng.uniform(2.5, 5.0)])
        poses.append(_look_at(center, target, float(rng.normal(0, 0.05))))
    return poses


def _generic_poses(rng, num_views, info):
    start = rng.uniform(0, 2 * np.pi)
    poses = []
    for angle in start + np.linspace(0, 1.6 * np.pi, num_views):
        radius = rng.uniform(5.5, 8.0)
        center = np.array([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(1.4, 3.0)])
        target = np.array([*rng.uniform(-1.0, 1.0, size=2), rng.uniform(0.3, 1.2)])
        poses.append(_look_at(center, target, float(rng.normal(0, 0.05))))
    return poses


def _thin_prism_camera(rng, camera_id, width, height) -> Camera:
    """A distorted DSLR-like camera: ETH3D's field of view (fx ≈ 0.564·W) and thin-prism terms."""
    fx = width * 0.564 * (1 + rng.uniform(-0.03, 0.03))
    fy = fx * (1 + rng.uniform(-0.002, 0.002))
    cx = width / 2 + rng.uniform(-0.01, 0.01) * width
    cy = height / 2 + rng.uniform(-0.01, 0.01) * height
    k1, k2 = 0.21 + rng.uniform(-0.05, 0.05), 0.21 + rng.uniform(-0.05, 0.05)
    k3, k4 = -0.158 + rng.uniform(-0.03, 0.03), 0.407 + rng.uniform(-0.05, 0.05)
    p1, p2 = rng.uniform(-6e-4, 6e-4), rng.uniform(-6e-4, 6e-4)
    sx1, sy1 = rng.uniform(4e-4, 2e-3) * rng.choice([-1, 1]), rng.uniform(4e-4, 2e-3) * rng.choice([-1, 1])
    params = (fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, sx1, sy1)
    return Camera(camera_id, "THIN_PRISM_FISHEYE", width, height, tuple(float(p) for p in params))


def undistorted_pinhole(camera: Camera) -> Camera:
    """PINHOLE camera whose canvas holds the whole distorted image (ETH3D's undistorted images)."""
    w, h = camera.width, camera.height
    t = np.linspace(0, 1, 257)
    border_x = np.concatenate([t * w, np.full_like(t, w), t * w, np.zeros_like(t)])
    border_y = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), t * h])
    x, y = camera_models.unproject(camera.model, camera.params, border_x, border_y)
    fx, fy, _, _ = camera_models.focal_and_center(camera.model, camera.params)
    width, height = int(np.ceil((x.max() - x.min()) * fx)), int(np.ceil((y.max() - y.min()) * fy))
    cx, cy = -x.min() * fx, -y.min() * fy
    return Camera(camera.camera_id, "PINHOLE", width, height, (fx, fy, float(cx), float(cy)))


# --------------------------------------------------------------------------- scene generation


def generate_scene(family: str, index: int, seed: int = 0, num_views: int = 10,
                   image_size: tuple[int, int] = (384, 256), num_cameras: int = 2) -> SyntheticScene:
    """Build (without writing) scene `index` of a family; deterministic in (family, index, seed)."""
    if family not in FAMILIES:
        raise UserError(f"--family {family!r} is not one of {', '.join(FAMILIES)}")
    rng = np.random.default_rng([seed, _FAMILY_CODE[family], index])
    builder, poser = (_facade_geometry, _facade_poses) if family == "facade" else (_generic_geometry, _generic_poses)
    geometry, info = builder(rng, seed * 1000 + index)
    width, height = image_size
    cams = [_thin_prism_camera(rng, cid, width, height) for cid in range(num_cameras)]
    poses = poser(rng, num_views, info)
    numbers = 100 + int(rng.integers(0, 8000)) + np.cumsum(rng.integers(1, 3, size=num_views))
    image_ids = rng.permutation(np.arange(num_views) * 3 + 1 + int(rng.integers(0, 20)))
    return SyntheticScene(
        name=f"{family}_{index:03d}",
        geometry=geometry,
        cameras=cams,
        undistorted_cameras=[undistorted_pinhole(c) for c in cams],
        view_names=[f"DSC_{int(n):04d}.JPG" for n in numbers],
        image_ids=[int(i) for i in image_ids],
        camera_ids=[int(i % num_cameras) for i in range(num_views)],
        rotations=[r for r, _ in poses],
        translations=[t for _, t in poses],
    )


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())


def _write_png(path: Path, mask: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", mask)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())


def _sfm_points(scene: SyntheticScene, zbuffers: list[np.ndarray], label_maps, rng, per_view: int = 40):
    """Surface points seen by >= 2 views, with COLMAP observations in every view that sees them."""
    world = []
    for v, (z, lab) in enumerate(zip(zbuffers, label_maps)):
        rows, cols = np.nonzero(np.isfinite(z) & (lab == 0))
        if len(rows) == 0:
            continue
        pick = rng.choice(len(rows), size=min(per_view, len(rows)), replace=False)
        cam = scene.ray_camera(v)
        x, y = camera_models.unproject(cam.model, cam.params, cols[pick] + 0.5, rows[pick] + 0.5)
        pc = np.stack([x, y, np.ones_like(x)], -1) * z[rows[pick], cols[pick]][:, None]
        world.append((pc - cam.translation) @ cam.rotation)  # Rᵀ (p − t)
    world = np.concatenate(world) if world else np.zeros((0, 3))
    observations = []  # per view: list of (point index, distorted xy, undistorted xy)
    for v, z in enumerate(zbuffers):
        cam, ucam = scene.ray_camera(v), scene.ray_camera(v, undistorted=True)
        pc = world @ cam.rotation.T + cam.translation
        front = pc[:, 2] > 1e-3
        xn, yn = pc[:, 0] / np.where(front, pc[:, 2], 1), pc[:, 1] / np.where(front, pc[:, 2], 1)
        px, py = camera_models.project(cam.model, cam.params, xn, yn)
        ux, uy = camera_models.project(ucam.model, ucam.params, xn, yn)
        inside = front & (px >= 0.5) & (px < cam.width - 0.5) & (py >= 0.5) & (py < cam.height - 0.5)
        col = np.clip(np.round(px - 0.5).astype(int), 0, cam.width - 1)
        row = np.clip(np.round(py - 0.5).astype(int), 0, cam.height - 1)
        seen = inside & (np.abs(z[row, col] - pc[:, 2]) < 0.02 * pc[:, 2])
        observations.append([(int(i), (px[i], py[i]), (ux[i], uy[i])) for i in np.nonzero(seen)[0]])
    counts = np.zeros(len(world), dtype=int)
    for obs in observations:
        for i, _, _ in obs:
            counts[i] += 1
    keep = np.nonzero(counts >= 2)[0]
    point_ids = {int(i): int(1000 + 7 * k + rng.integers(0, 7)) for k, i in enumerate(keep)}
    return world, observations, point_ids


def _write_ply(path: Path, xyz: np.ndarray) -> None:
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(xyz)}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    )
    path.write_bytes(header.encode("ascii") + np.ascontiguousarray(xyz, dtype="<f4").tobytes())


def _write_mlp(path: Path, filename: str, global_from_scan: np.ndarray) -> None:
    rows = "".join(" ".join(f"{v:.10g}" for v in row) + " \n" for row in global_from_scan)
    path.write_text(
        '<!DOCTYPE MeshLabDocument>\n<MeshLabProject>\n <MeshGroup>\n'
        f'  <MLMesh label="{filename}" filename="{filename}">\n   <MLMatrix44>\n{rows}</MLMatrix44>\n'
        "  </MLMesh>\n </MeshGroup>\n <RasterGroup/>\n</MeshLabProject>\n"
    )


def _scan_points(geometry: Geometry, spacing: float = 0.12, max_points: int = 60000) -> np.ndarray:
    points = []
    for quad in geometry.quads:
        if quad.label == 2:  # moving objects are not in the laser scan
            continue
        nu = max(2, int(np.linalg.norm(quad.edge_u) / spacing))
        nv = max(2, int(np.linalg.norm(quad.edge_v) / spacing))
        a, b = np.meshgrid((np.arange(nu) + 0.5) / nu, (np.arange(nv) + 0.5) / nv)
        points.append(quad.corner + a.reshape(-1, 1) * quad.edge_u + b.reshape(-1, 1) * quad.edge_v)
    points = np.concatenate(points)
    if len(points) > max_points:
        points = points[np.linspace(0, len(points) - 1, max_points).astype(int)]
    return points


def write_scene(scene: SyntheticScene, out_dir) -> Path:
    """Write one scene in ETH3D's layout; built in a temporary folder, then renamed into place."""
    final = Path(out_dir) / scene.name
    with atomic_dir(final) as tmp:
        _write_scene_files(scene, tmp)
    return final


def _write_scene_files(scene: SyntheticScene, tmp: Path) -> None:
    rng = np.random.default_rng([scene.geometry.seed, 77])
    zbuffers, label_maps = [], []
    for v, name in enumerate(scene.view_names):
        cam = scene.ray_camera(v)
        rays = cam.pixel_rays()
        hits = cast(scene.geometry, cam, rays)
        image = np.round(shade(scene.geometry, cam, hits, rays) * 255).astype(np.uint8)
        label = labels(scene.geometry, hits)
        write_jpeg(tmp / "images" / "dslr_images" / name, image)
        depth = hits.z.copy()
        depth[label == 2] = np.inf
        far = np.clip((depth - 15.0) / 30.0, 0.0, 0.5)  # laser returns thin out with distance
        depth[rng.random(depth.shape) < far] = np.inf
        path = tmp / "ground_truth_depth" / "dslr_images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        depth.astype("<f4").tofile(path)
        if label.any():
            _write_png(tmp / "masks_for_images" / "dslr_images" / (Path(name).stem + ".png"), label)
        ucam = scene.ray_camera(v, undistorted=True)
        urays = ucam.pixel_rays()
        uimage = np.round(shade(scene.geometry, ucam, cast(scene.geometry, ucam, urays), urays) * 255)
        px, py = camera_models.project(cam.model, cam.params, *urays)
        outside = (px < 0) | (px > cam.width) | (py < 0) | (py > cam.height)
        uimage[outside] = 0
        write_jpeg(tmp / "images" / "dslr_images_undistorted" / name, uimage.astype(np.uint8))
        zbuffers.append(hits.z)
        label_maps.append(label)

    world, observations, point_ids = _sfm_points(scene, zbuffers, label_maps, rng)
    tracks = {i: [] for i in point_ids}
    for folder, undistorted in (("dslr_calibration_jpg", False), ("dslr_calibration_undistorted", True)):
        images = []
        for v, name in enumerate(scene.view_names):
            xys, ids = [], []
            for i, xy, uxy in observations[v]:
                if i in point_ids:
                    if not undistorted:
                        tracks[i].append((scene.image_ids[v], len(ids)))
                    xys.append(uxy if undistorted else xy)
                    ids.append(point_ids[i])
            cam = scene.ray_camera(v, undistorted)
            for _ in range(int(rng.integers(3, 10))):  # unmatched keypoints
                xys.append((rng.uniform(0, cam.width), rng.uniform(0, cam.height)))
                ids.append(-1)
            qvec = camera_models.rotation_to_quaternion(scene.rotations[v])
            if v % 3 == 1:
                qvec = -qvec  # ETH3D's files contain negative QW: same rotation
            subdir = "dslr_images_undistorted" if undistorted else "dslr_images"
            images.append(Image(scene.image_ids[v], qvec, scene.translations[v], scene.camera_ids[v],
                                f"{subdir}/{name}", np.array(xys).reshape(-1, 2), np.array(ids, dtype=np.int64)))
        cams = scene.undistorted_cameras if undistorted else scene.cameras
        write_cameras(tmp / folder / "cameras.txt", cams)
        write_images(tmp / folder / "images.txt", images)
        points = []
        for i, pid in point_ids.items():
            track = np.array(tracks[i], dtype=np.int64).reshape(-1, 2)
            points.append(Point3D(pid, world[i], np.array([128, 128, 128], np.uint8), 0.5, track[:, 0], track[:, 1]))
        write_points3d(tmp / folder / "points3D.txt", points)

    scan_dir = tmp / "dslr_scan_eval"
    scan_dir.mkdir(parents=True)
    yaw = float(rng.uniform(0, 2 * np.pi))
    global_from_scan = np.eye(4)
    global_from_scan[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]
    global_from_scan[:3, 3] = rng.uniform(-5, 5, size=3)
    scan = _scan_points(scene.geometry)
    _write_ply(scan_dir / "scan1.ply", (scan - global_from_scan[:3, 3]) @ global_from_scan[:3, :3])
    _write_mlp(scan_dir / "scan_alignment.mlp", "scan1.ply", global_from_scan)


def write_synthetic_dataset(out_dir, num_scenes: int, seed: int = 0, family: str = "facade",
                            views_per_scene: int = 10, image_size: tuple[int, int] = (384, 256),
                            num_cameras: int = 2, progress: bool = False) -> list[Path]:
    """Write `num_scenes` scenes named `<family>_000`, ... under `out_dir`; returns their folders."""
    if family not in FAMILIES:
        raise UserError(f"--family {family!r} is not one of {', '.join(FAMILIES)}")
    if num_scenes < 1:
        raise UserError(f"--scenes must be >= 1, got {num_scenes}")
    if views_per_scene < 2:
        raise UserError(f"--views must be >= 2, got {views_per_scene}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    for index in tqdm(range(num_scenes), desc=f"synthetic {family} scenes", disable=not progress):
        scene = generate_scene(family, index, seed, views_per_scene, image_size, num_cameras)
        paths.append(write_scene(scene, out_dir))
    return paths


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must look like 384x256, got {text!r}") from None
    if w < 32 or h < 32:
        raise UserError(f"--size must be at least 32x32, got {text!r}")
    return w, h


@cli_main
def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (scenes are written under it)")
    parser.add_argument("--scenes", type=int, required=True, help="number of scenes")
    parser.add_argument("--family", default="facade", help="facade (target domain) or generic (pretraining)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", type=int, default=10, help="images per scene")
    parser.add_argument("--size", default="384x256", help="distorted image size WxH")
    parser.add_argument("--cameras", type=int, default=2, help="distinct cameras per scene")
    args = parser.parse_args(argv)
    paths = write_synthetic_dataset(args.out, args.scenes, args.seed, args.family, args.views,
                                    _parse_size(args.size), args.cameras, progress=True)
    print(f"wrote {len(paths)} {args.family} scenes under {args.out}")


if __name__ == "__main__":
    main()
