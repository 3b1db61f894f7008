"""The viewer in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
software WebGL through SwiftShader) driven by selenium.

A small scene trained for real is served on 127.0.0.1; the test types a query into the page's
text box and clicks "Find", then checks the screenshot: the pixels that turned to the first
instance's highlight colour lie where that instance's Gaussians project with the browser's own
camera (read back from the page), and almost nowhere else. Chromium is told that every host
but 127.0.0.1 does not exist, so the page must work offline. Skips with the reason where
Chromium, its driver or selenium is missing (``scripts/setup.sh`` installs them as root).
"""

from __future__ import annotations

import io
import shutil
import time

import numpy as np
import pytest

# The timeout covers the session fixture that trains the scene (15 s on an idle 2-core machine, minutes
# on a loaded one).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
QUERY = "black can"


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(scripts/setup.sh does as root: apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (scripts/requirements.txt)")
    import os

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never try to download a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,700",
                "--force-device-scale-factor=1", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                "--ignore-gpu-blocklist", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _rotation_wxyz(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation matrix (the textbook formula)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip


def _project(points: np.ndarray, wxyz: np.ndarray, position: np.ndarray, fov_y: float, w: int, h: int) -> np.ndarray:
    """Pixel coordinates of world points seen by a viser camera: ``P_world = R p_cam + t`` with
    OpenCV axes (x right, y down, z forward) and a vertical field of view ``fov_y``."""
    R = _rotation_wxyz(wxyz)
    cam = (np.asarray(points, dtype=np.float64) - position) @ R  # R^T (p - t), row-wise
    assert (cam[:, 2] > 0).all(), "the object is behind the browser's camera"
    f = 0.5 * h / np.tan(0.5 * fov_y)
    return np.stack([f * cam[:, 0] / cam[:, 2] + 0.5 * w, f * cam[:, 1] / cam[:, 2] + 0.5 * h], axis=1)


def _reddish(img: np.ndarray) -> np.ndarray:
    """Pixels of the first instance's highlight (PALETTE[0], red) mixed over a dark object."""
    r, g, b = (img[..., i].astype(np.float32) / 255 for i in range(3))
    return (r > 0.4) & (r - g > 0.2) & (r - b > 0.2)


def _wait(cond, timeout: float, what: str) -> None:  # noqa: ANN001 - a callable
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_typed_query_lights_up_the_object_where_it_projects(browser, trained_scene):
    import cv2
    from PIL import Image
    from selenium.webdriver.common.by import By

    from ccl_lgs_ros.capture.format import Capture
    from ccl_lgs_ros.geometry import opengl_to_optical_c2w
    from ccl_lgs_ros.scene import load_scene
    from ccl_lgs_ros.viewer.highlight import pick_camera
    from ccl_lgs_ros.viewer.server import SceneViewer

    scene_dir, cap_dir = trained_scene
    scene, cap = load_scene(scene_dir), Capture.load(cap_dir)
    ref = scene.engine.query(QUERY)  # what the page must show: the same engine, the same answer
    assert ref.found, "the trained test scene does not find the query at all"
    target = ref.instances[0]
    viewer = SceneViewer(host="127.0.0.1", port=0)
    try:
        viewer.set_scene(scene)
        assert viewer.host == "127.0.0.1" and viewer.url.startswith("http://127.0.0.1:")
        browser.get(viewer.url)
        _wait(lambda: len(viewer.server.get_clients()) == 1, 60, "the page to connect")
        client = next(iter(viewer.server.get_clients().values()))
        # Look at the object from the training camera that sees it best.
        k = pick_camera(cap, target.centroid[None])
        client.camera.up_direction = (0.0, 0.0, 1.0)
        client.camera.position = opengl_to_optical_c2w(cap.frames[k].c2w)[:3, 3]
        client.camera.look_at = target.centroid
        client.camera.fov = 0.7
        rect = browser.execute_script("const r = document.querySelector('canvas').getBoundingClientRect();"
                                      "return [r.left, r.top, r.width, r.height];")
        x0, y0, cw, ch = (int(round(v)) for v in rect)

        def shot() -> np.ndarray:
            img = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"))
            return img[y0 : y0 + ch, x0 : x0 + cw]

        time.sleep(3.0)  # let the splats arrive and render at the new camera
        before = shot()
        assert before.std() > 5, "the page drew nothing (no WebGL?)"
        box = browser.find_element(By.XPATH, "//label[normalize-space()='Query']/following::input[1]")
        box.click()
        box.send_keys(QUERY)
        _wait(lambda: viewer.gui_text.value == QUERY, 20, "the typed text to reach the server")
        browser.find_element(By.XPATH, "//button[normalize-space()='Find']").click()
        _wait(lambda: viewer.answers_shown >= 1, 20, "the answer")
        assert viewer.last_result.text == QUERY and len(viewer.last_result.instances) == len(ref.instances)
        np.testing.assert_array_equal(viewer.last_result.instances[0].gaussian_ids, target.gaussian_ids)
        new_red = np.zeros(before.shape[:2], bool)
        end = time.monotonic() + 60
        while time.monotonic() < end and new_red.sum() < 200:
            time.sleep(1.0)
            after = shot()
            new_red = _reddish(after) & ~_reddish(before)
        Image.fromarray(np.concatenate([before, after], axis=1)).save(scene_dir.parent / "browser.png")

        cam = client.camera
        assert (cam.image_width, cam.image_height) == (cw, ch)
        uv = _project(scene.index.means[target.gaussian_ids], cam.wxyz, cam.position, cam.fov, cw, ch)
        footprint = np.zeros((ch, cw), np.uint8)
        cv2.fillConvexPoly(footprint, cv2.convexHull(np.rint(uv).astype(np.int32)), 1)
        # The splats' extent, the box's wireframe and the label's anchor reach past the centres.
        region = cv2.dilate(footprint, np.ones((41, 41), np.uint8)).astype(bool)
        n = int(new_red.sum())
        assert n >= 200, f"only {n} pixels turned to the highlight colour after the query"
        inside = float((new_red & region).sum()) / n
        assert inside >= 0.9, f"{1 - inside:.0%} of the highlighted pixels lie away from the object"
        covered = float((new_red & footprint.astype(bool)).sum()) / max(int(footprint.sum()), 1)
        assert covered >= 0.3, f"the highlight covers only {covered:.0%} of the object's projection"
    finally:
        viewer.stop()
