#!/usr/bin/env python3
"""Screenshot of ``ccl-lgs view`` after a query typed into the page (how docs/images/viewer.png
was made): serves SCENE on 127.0.0.1, opens it in headless Chromium (Debian's chromium +
chromium-driver, software WebGL), looks at the answer from the training camera that sees it
best, types QUERY, clicks "Find" and saves the window.

    .venv/bin/python scripts/viewer_screenshot.py demo_out/scene "black can" docs/images/viewer.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scene", type=Path)
    p.add_argument("query")
    p.add_argument("out", type=Path)
    p.add_argument("--size", default="1200,760", help="browser window WIDTH,HEIGHT")
    p.add_argument("--fov", type=float, default=0.8, help="vertical field of view (rad)")
    args = p.parse_args()
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        print("needs Debian's chromium and chromium-driver", file=sys.stderr)
        return 2
    import numpy as np
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from ccl_lgs_ros.capture.format import Capture
    from ccl_lgs_ros.geometry import opengl_to_optical_c2w
    from ccl_lgs_ros.scene import load_scene
    from ccl_lgs_ros.viewer.highlight import pick_camera
    from ccl_lgs_ros.viewer.server import SceneViewer, capture_poses

    scene = load_scene(args.scene)
    ref = scene.engine.query(args.query)
    viewer = SceneViewer(host="127.0.0.1", port=0)
    viewer.set_scene(scene)
    os.environ["SE_OFFLINE"] = "true"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={args.size}",
                "--force-device-scale-factor=1", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                "--ignore-gpu-blocklist", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        driver.get(viewer.url)
        while not viewer.server.get_clients():
            time.sleep(0.1)
        client = next(iter(viewer.server.get_clients().values()))
        look = np.mean([i.centroid for i in ref.instances], axis=0) if ref.found else np.median(scene.index.means, 0)
        if capture_poses(scene) is not None:
            cap = Capture.load(scene.record["capture"])
            eye = opengl_to_optical_c2w(cap.frames[pick_camera(cap, look[None])].c2w)[:3, 3]
        else:
            eye = look + np.array([0.8, -0.8, 0.6])
        client.camera.up_direction = (0.0, 0.0, 1.0)
        client.camera.position = eye
        client.camera.look_at = look
        client.camera.fov = args.fov
        time.sleep(3)
        for button in driver.find_elements(By.CSS_SELECTOR, "button.mantine-Notification-closeButton"):
            button.click()  # the "software WebGL" notice of a headless browser
        box = driver.find_element(By.XPATH, "//label[normalize-space()='Query']/following::input[1]")
        box.click()
        box.send_keys(args.query)
        while viewer.gui_text.value != args.query:
            time.sleep(0.05)
        driver.find_element(By.XPATH, "//button[normalize-space()='Find']").click()
        while viewer.answers_shown < 1:
            time.sleep(0.05)
        time.sleep(6)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        png = driver.get_screenshot_as_png()
        import io

        Image.open(io.BytesIO(png)).convert("RGB").save(args.out, optimize=True)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        viewer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
