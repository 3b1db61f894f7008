"""The RViz-like offscreen picture: camera maths, RViz's rainbow, and what ends up in the pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ccl_lgs_ros.viz import (
    BoxMarker,
    OrbitView,
    SphereMarker,
    TextMarker,
    _Camera,
    auto_view,
    rainbow,
    render_rviz_like,
)


def _decode(png: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return bgr[:, :, ::-1].astype(int)


def test_rainbow_matches_rviz_endpoints():
    np.testing.assert_allclose(
        rainbow(np.array([0.0, 0.5, 1.0, -3.0, 7.0, np.nan])),
        [[1, 0, 1], [0, 1, 0.5], [1, 0, 0], [1, 0, 1], [1, 0, 0], [1, 0, 1]],
    )


def test_orbit_eye_and_projection():
    view = OrbitView(focal=(2.0, 0.0, 0.5), distance=4.0, yaw=0.0, pitch=0.0)
    np.testing.assert_allclose(view.eye(), [6.0, 0.0, 0.5])
    cam = _Camera(view, 200, 100)
    uv, z = cam.project(np.array([[2.0, 0.0, 0.5], [2.0, 0.0, 1.5], [2.0, 1.0, 0.5], [10.0, 0.0, 0.5]]))
    np.testing.assert_allclose(uv[0], [100, 50])
    np.testing.assert_allclose(z[:3], 4.0)
    assert uv[1, 1] < 50  # higher in the world is higher in the image
    assert uv[2, 0] > 100  # +y is to the right when looking along -x (z up)
    assert z[3] < 0  # behind the camera


def test_auto_view_frames_the_points():
    pts = np.array([[1.0, 2.0, 0.0], [1.2, 2.4, 0.3]])
    view = auto_view(pts)
    np.testing.assert_allclose(view.focal, [1.1, 2.2, 0.15])
    cam = _Camera(view, 640, 480)
    uv, z = cam.project(pts)
    assert (z > 0).all() and (np.abs(uv - [320, 240]) < 240).all()


def test_render_draws_boxes_points_and_background():
    view = OrbitView(focal=(0.0, 0.0, 0.0), distance=3.0, yaw=0.5, pitch=0.4)
    box = BoxMarker(np.zeros(3), np.array([0, 0, 0, 1.0]), np.array([0.6, 0.6, 0.6]), (1.0, 0.0, 0.0, 0.9))
    far = np.array([[0.0, 0.0, 0.0]]) + view.eye() * 5  # behind the camera: skipped, no error
    png = render_rviz_like(
        None,
        scene_points=np.concatenate([far, [[0.0, 1.2, 0.0]]]),
        scene_colors=np.array([[0, 1, 0], [0, 1, 0.0]]),
        boxes=[box],
        texts=[TextMarker(np.array([0, 0, 0.5]), "red box #0 (0.91)")],
        spheres=[SphereMarker(np.zeros(3), 0.05, (0, 0, 1, 1))],
        view=view,
        width=320,
        height=240,
        grid_cells=2,
    )
    img = _decode(png)
    assert img.shape == (240, 320, 3)
    cam = _Camera(view, 320, 240)
    # a face of the box, off the centroid sphere: red dominates
    face, centre = cam.project(np.array([[0.3, -0.25, -0.2], [0.0, 0.0, 0.0]]))[0].round().astype(int)
    assert np.abs(face - centre).max() > 15  # clear of the centroid sphere
    u, v = face
    r, g, b = img[v, u]
    assert r > 150 and g < 80 and b < 80, img[v, u]
    # the centroid sphere is blue
    u, v = cam.project(np.zeros((1, 3)))[0][0].round().astype(int)
    assert img[v, u, 2] > 150 and img[v, u, 0] < 120
    # a corner far from everything keeps RViz's background colour
    np.testing.assert_allclose(img[-2, -2], [48, 48, 48], atol=2)


def test_render_query_cloud_uses_relevance_colours(tmp_path):
    view = OrbitView(focal=(0.0, 0.0, 0.0), distance=1.0, yaw=0.0, pitch=0.0)
    out = tmp_path / "p.png"
    render_rviz_like(
        out,
        query_points=np.zeros((1, 3)),
        query_relevance=np.array([1.0]),
        view=view,
        width=160,
        height=120,
        query_sphere_m=0.2,
        grid_cells=0,
    )
    img = _decode(out.read_bytes())
    r, g, b = img[60, 80]
    assert r > 200 and g < 60 and b < 60  # relevance 1 -> rainbow red


@pytest.mark.parametrize("n", [0, 1])
def test_render_empty_inputs(n):
    png = render_rviz_like(None, scene_points=np.zeros((n, 3)), width=64, height=48)
    assert _decode(png).shape == (48, 64, 3)
