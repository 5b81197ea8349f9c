"""The synthetic generator writes ETH3D's exact formats, deterministically, from real geometry."""

import re
import subprocess
import sys

import cv2
import numpy as np

from lora_train.data import cameras as cm
from lora_train.data.colmap import read_cameras, read_images, read_points3d
from lora_train.data.synthetic import generate_scene, write_synthetic_dataset

TINY = dict(views_per_scene=3, image_size=(96, 64))


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        write_synthetic_dataset(tmp_path / name, 1, seed=seed, family="generic", **TINY)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in a)
    assert not any(".tmp" in k for k in a)  # written atomically, no leftovers


def test_layout_and_byte_formats(synthetic_root):
    scene = synthetic_root / "facade_000"
    jpg_cams = read_cameras(scene / "dslr_calibration_jpg" / "cameras.txt")
    und_cams = read_cameras(scene / "dslr_calibration_undistorted" / "cameras.txt")
    images = read_images(scene / "dslr_calibration_jpg" / "images.txt")
    und_images = read_images(scene / "dslr_calibration_undistorted" / "images.txt")
    assert len(jpg_cams) >= 2 and min(jpg_cams) == 0
    for cid, cam in jpg_cams.items():
        assert cam.model == "THIN_PRISM_FISHEYE" and (cam.width, cam.height) == (384, 256)
        assert all(abs(p) > 0 for p in cam.params[4:])  # every distortion term is non-zero
        und = und_cams[cid]
        assert und.model == "PINHOLE" and und.width > cam.width and und.height > cam.height
        assert und.params[:2] == cam.params[:2] and und.params[2] != cam.params[2]
    header = (scene / "dslr_calibration_jpg" / "images.txt").read_text().splitlines()
    assert [line.startswith("#") for line in header[:5]] == [True] * 4 + [False]
    assert [l.startswith("#") for l in (scene / "dslr_calibration_jpg/cameras.txt").read_text().splitlines()[:4]] == [True] * 3 + [False]
    ids = list(images)
    assert ids != sorted(ids) or np.any(np.diff(sorted(ids)) > 1)  # not 1..N in order
    assert any(im.qvec[0] < 0 for im in images.values())  # negative QW, as in ETH3D files
    masks = holes = 0
    for image in images.values():
        name = image.name.split("/")[1]
        assert image.name == f"dslr_images/{name}" and re.fullmatch(r"DSC_\d{4}\.JPG", name)
        assert any(u.name == f"dslr_images_undistorted/{name}" for u in und_images.values())
        jpg = (scene / "images" / image.name).read_bytes()
        assert jpg[:2] == b"\xff\xd8"  # a real JPEG
        depth_bytes = (scene / "ground_truth_depth" / image.name).read_bytes()
        assert len(depth_bytes) == 4 * 384 * 256  # raw float32, no header, named .JPG
        depth = np.frombuffer(depth_bytes, "<f4")
        assert np.all(depth[np.isfinite(depth)] > 0)
        holes += int(np.isinf(depth).sum())
        und = cv2.imread(str(scene / "images" / "dslr_images_undistorted" / name))
        ucam = und_cams[image.camera_id]
        assert und.shape[:2] == (ucam.height, ucam.width)
        mask_path = scene / "masks_for_images" / "dslr_images" / name.replace(".JPG", ".png")
        if mask_path.is_file():
            masks += 1
            mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            assert mask.dtype == np.uint8 and mask.shape == (256, 384) and set(np.unique(mask)) <= {0, 1, 2}
            assert mask.any()
            assert np.all(np.isinf(depth.reshape(256, 384)[mask == 2]))  # no GT under mask 2
    assert 0 < masks < len(images)
    assert holes > 0  # +inf where there is no ground truth (sky, mask 2, sparse far returns)


def test_sfm_tracks_reproject_onto_their_keypoints(synthetic_root):
    scene = synthetic_root / "facade_000"
    for folder in ("dslr_calibration_jpg", "dslr_calibration_undistorted"):
        cams = read_cameras(scene / folder / "cameras.txt")
        images = read_images(scene / folder / "images.txt")
        points = read_points3d(scene / folder / "points3D.txt")
        assert len(points) > 50
        errors = []
        for point in points.values():
            assert len(point.image_ids) >= 2
            for image_id, idx in zip(point.image_ids, point.point2d_idxs):
                im = images[image_id]
                assert im.point3d_ids[idx] == point.point3d_id
                pc = im.rotation() @ point.xyz + im.tvec
                cam = cams[im.camera_id]
                px, py = cm.project(cam.model, cam.params, pc[0] / pc[2], pc[1] / pc[2])
                errors.append(np.hypot(px - im.xys[idx, 0], py - im.xys[idx, 1]))
        assert max(errors) < 1e-3


def test_scan_ply_and_alignment_land_on_the_geometry(synthetic_root):
    folder = synthetic_root / "facade_000" / "dslr_scan_eval"
    data = (folder / "scan1.ply").read_bytes()
    header, _, body = data.partition(b"end_header\n")
    lines = header.decode().splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    count = int(lines[2].split()[-1])
    assert lines[3:6] == ["property float x", "property float y", "property float z"]
    local = np.frombuffer(body, "<f4").reshape(count, 3).astype(np.float64)
    mlp = (folder / "scan_alignment.mlp").read_text()
    assert 'filename="scan1.ply"' in mlp
    rows = re.search(r"<MLMatrix44>\n(.*?)</MLMatrix44>", mlp, re.S).group(1).split("\n")[:4]
    assert all(r.endswith(" ") for r in rows)  # MeshLab needs the trailing spaces
    global_from_scan = np.array([[float(v) for v in r.split()] for r in rows])
    world = local @ global_from_scan[:3, :3].T + global_from_scan[:3, 3]
    geometry = generate_scene("facade", 0, seed=0, num_views=8).geometry
    sample = world[:: max(1, len(world) // 500)]
    best = np.full(len(sample), np.inf)
    for quad in geometry.quads:
        d = sample - quad.corner
        a = np.clip(d @ quad.edge_u / (quad.edge_u @ quad.edge_u), 0, 1)
        b = np.clip(d @ quad.edge_v / (quad.edge_v @ quad.edge_v), 0, 1)
        best = np.minimum(best, np.linalg.norm(sample - quad.corner - a[:, None] * quad.edge_u - b[:, None] * quad.edge_v, axis=1))
    assert best.max() < 1e-4  # metres, float32 rounding
    assert np.abs(local - world).max() > 0.1  # the scan really is in its own frame


def test_generic_family_differs_from_facade(synthetic_generic_root):
    names = sorted(p.name for p in synthetic_generic_root.iterdir())
    assert names == ["generic_000", "generic_001"]
    facade = generate_scene("facade", 0)
    generic = generate_scene("generic", 0)
    assert {m.kind for m in generic.geometry.materials.values()} != {m.kind for m in facade.geometry.materials.values()}


def test_cli(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "lora_train.data.synthetic", "--out", str(tmp_path / "d"),
                         "--scenes", "1", "--views", "2", "--size", "64x48", "--family", "generic"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "d" / "generic_000" / "dslr_calibration_jpg" / "images.txt").is_file()
    bad = subprocess.run([sys.executable, "-m", "lora_train.data.synthetic", "--out", str(tmp_path / "e"),
                          "--scenes", "1", "--family", "castle"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --family 'castle' is not one of facade, generic"


def test_cli_bad_size(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "lora_train.data.synthetic", "--out", str(tmp_path),
                          "--scenes", "1", "--size", "64"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --size must look like 384x256, got '64'"
