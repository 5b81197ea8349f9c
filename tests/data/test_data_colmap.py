"""COLMAP text parsing with the quirks of ETH3D's files."""

import numpy as np
import pytest

from lora_train.data.cameras import quaternion_to_rotation
from lora_train.data.colmap import (
    Camera,
    Image,
    Point3D,
    read_cameras,
    read_images,
    read_points3d,
    write_cameras,
    write_images,
    write_points3d,
)
from lora_train.errors import UserError

CAMERAS_3_LINE_HEADER = """\
# Camera list with one line of data per camera:
#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]
# Number of cameras: 2
0 THIN_PRISM_FISHEYE 6048 4032 3411.42 3410.02 3041.29 2014.07 0.21047 0.21102 -5.36231e-06 0.00051541 -0.158023 0.406856 -8.46499e-05 0.000861313
7 PINHOLE 6211 4137 3410.34 3409.98 3121.33 2067.07
"""

# 4-line header; image 22 has an EMPTY POINTS2D line in the middle, image 5 a negative QW and a
# non-unit quaternion; ids are non-contiguous; the last image's POINTS2D line is missing at EOF.
IMAGES_4_LINE_HEADER = """\
# Image list with two lines of data per image:
#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME
#   POINTS2D[] as (X, Y, POINT3D_ID)
# Number of images: 3, mean observations per image: 1
22 -0.292265 -0.174238 0.547904 -0.764214 1.80195 -0.821371 -7.08304 0 dslr_images/DSC_0307.JPG

5 -1.7 0.2 0.4 -0.1 0.5 0.25 3.0 7 dslr_images/DSC_0299.JPG
2362.39 248.498 58396 1784.7 268.254 -1 10.5 20.25 63390
1000 1 0 0 0 0 0 0 0 dslr_images/DSC_0400.JPG"""

POINTS = """\
# 3D point list with one line of data per point:
#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)
# Number of points: 1, mean track length: 2
63390 1.67241 0.292931 0.609726 115 121 122 1.33927 5 2 22 0
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_cameras_three_line_header_and_models(tmp_path):
    cams = read_cameras(_write(tmp_path, "cameras.txt", CAMERAS_3_LINE_HEADER))
    assert sorted(cams) == [0, 7]
    assert cams[0].model == "THIN_PRISM_FISHEYE" and (cams[0].width, cams[0].height) == (6048, 4032)
    assert len(cams[0].params) == 12 and cams[0].params[-1] == pytest.approx(0.000861313)
    assert cams[7].model == "PINHOLE" and cams[7].params == (3410.34, 3409.98, 3121.33, 2067.07)


def test_images_parity_empty_points_negative_qw_subfolder(tmp_path):
    images = read_images(_write(tmp_path, "images.txt", IMAGES_4_LINE_HEADER))
    assert list(images) == [22, 5, 1000]  # file order, non-contiguous ids
    assert [im.name for im in images.values()] == [
        "dslr_images/DSC_0307.JPG", "dslr_images/DSC_0299.JPG", "dslr_images/DSC_0400.JPG"]
    assert images[22].xys.shape == (0, 2) and images[22].point3d_ids.shape == (0,)
    assert images[5].point3d_ids.tolist() == [58396, -1, 63390]
    np.testing.assert_allclose(images[5].xys[2], [10.5, 20.25])
    assert images[1000].xys.shape == (0, 2)
    for im in images.values():
        assert np.linalg.norm(im.qvec) == pytest.approx(1.0)
        rot = im.rotation()
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rot) == pytest.approx(1.0)
    # negative QW describes the same rotation as its negation
    q = np.array([-1.7, 0.2, 0.4, -0.1])
    np.testing.assert_allclose(images[5].rotation(), quaternion_to_rotation(-q), atol=1e-12)
    np.testing.assert_allclose(images[5].center(), -images[5].rotation().T @ [0.5, 0.25, 3.0])


def test_images_skipping_blank_lines_would_break_parity(tmp_path):
    """The blank POINTS2D line of image 22 must not make image 5's pose line read as points."""
    images = read_images(_write(tmp_path, "images.txt", IMAGES_4_LINE_HEADER))
    np.testing.assert_allclose(images[5].tvec, [0.5, 0.25, 3.0])
    assert images[5].camera_id == 7


def test_points3d_tracks(tmp_path):
    points = read_points3d(_write(tmp_path, "points3D.txt", POINTS))
    p = points[63390]
    np.testing.assert_allclose(p.xyz, [1.67241, 0.292931, 0.609726])
    assert p.rgb.tolist() == [115, 121, 122]
    assert p.image_ids.tolist() == [5, 22] and p.point2d_idxs.tolist() == [2, 0]


def test_write_read_round_trip_with_eth3d_headers(tmp_path):
    cams = [Camera(3, "PINHOLE", 640, 480, (500.0, 501.0, 320.5, 240.25))]
    q = np.array([0.5, -0.5, 0.5, -0.5])
    images = [
        Image(9, q, np.array([1.0, 2.0, 3.0]), 3, "dslr_images/DSC_1.JPG", np.array([[1.5, 2.5]]), np.array([77])),
        Image(4, -q, np.array([0.0, 0.0, 1.0]), 3, "dslr_images/DSC_2.JPG"),
    ]
    points = [Point3D(77, np.array([0.1, 0.2, 0.3]), np.array([1, 2, 3], np.uint8), 0.25, np.array([9]), np.array([0]))]
    write_cameras(tmp_path / "cameras.txt", cams)
    write_images(tmp_path / "images.txt", images)
    write_points3d(tmp_path / "points3D.txt", points)
    text = (tmp_path / "images.txt").read_text().splitlines()
    assert [line.startswith("#") for line in text[:5]] == [True, True, True, True, False]
    assert text[-1] == ""  # image without keypoints: empty POINTS2D line
    assert sum(line.startswith("#") for line in (tmp_path / "cameras.txt").read_text().splitlines()) == 3
    assert read_cameras(tmp_path / "cameras.txt")[3] == cams[0]
    back = read_images(tmp_path / "images.txt")
    assert list(back) == [9, 4]
    np.testing.assert_allclose(back[4].rotation(), back[9].rotation(), atol=1e-12)
    assert back[9].point3d_ids.tolist() == [77]
    assert read_points3d(tmp_path / "points3D.txt")[77].image_ids.tolist() == [9]


@pytest.mark.parametrize(
    "filename, text, reader, expected",
    [
        ("cameras.txt", "# c\n1 FANCY_MODEL 10 10 1 2 3\n", read_cameras, "cameras.txt:2: unknown camera model 'FANCY_MODEL'"),
        ("cameras.txt", "1 PINHOLE 10 10 1 2 3\n", read_cameras, "cameras.txt:1: camera model PINHOLE needs 4"),
        ("cameras.txt", "1 PINHOLE ten 10 1 2 3 4\n", read_cameras, "cameras.txt:1: expected numbers"),
        ("images.txt", "# h\n1 1 0 0 0 0 0 0 dslr_images/a.JPG\n\n", read_images, "images.txt:2: image line needs"),
        ("images.txt", "1 1 0 0 0 0 0 0 1 a.JPG\n1.0 2.0\n", read_images, "images.txt:2: POINTS2D needs"),
        ("images.txt", "1 0 0 0 0 0 0 0 1 a.JPG\n\n", read_images, "images.txt:1: quaternion of image a.JPG has zero length"),
        ("points3D.txt", "5 1 2 3 4 5 6 0.5 1\n", read_points3d, "points3D.txt:1: point line needs"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, filename, text, reader, expected):
    path = _write(tmp_path, filename, text)
    with pytest.raises(UserError) as err:
        reader(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and expected in message


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="missing calibration file .*cameras.txt"):
        read_cameras(tmp_path / "cameras.txt")
