"""The mapping node serving the browser viewer (``viewer.serve: true``), across processes.

The node loads a scene, answers ``/semantic_query`` over real DDS, and its viewer (127.0.0.1)
follows: the page is served, and in headless Chromium (where installed) it shows the last
``/semantic_query`` answer and, after ``~/load_scene``, the new scene."""

from __future__ import annotations

import re
import shutil
import socket
import time
import urllib.request

import pytest
from _rosutil import RosClient, write_blob_scene, write_params

pytest.importorskip("viser", reason="viser is not installed (scripts/requirements.txt)")

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(240)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _page_text(driver) -> str:  # noqa: ANN001 - a selenium WebDriver
    return driver.find_element("tag name", "body").text


def test_node_serves_the_viewer_and_shows_its_answers(ros_procs, tmp_path, ros_env_vars):
    from ccl_lgs_interfaces.srv import LoadScene, SemanticQuery

    root = tmp_path / "root"
    write_blob_scene(root / "scenes" / "lab")
    write_blob_scene(root / "scenes" / "kitchen", labels=("green apple",), centers=((1.0, 1.0, 0.5),))
    port = _free_port()
    pfile = write_params(tmp_path / "p.yaml", {
        "node.serve_only": True, "node.initial_scene": str(root / "scenes" / "lab"),
        "node.allowed_roots": [str(root)], "query.threshold": 0.8, "device": "cpu",
        "viewer.serve": True, "viewer.port": port,
    })  # fmt: skip
    proc = ros_procs.start(["-m", "ccl_lgs_ros.ros.mapping_node", "--ros-args", "--params-file", pfile], name="viewer")
    log = ros_procs.wait_for_line(proc, "/semantic_query is up", timeout=60)
    url = re.search(r"browser viewer at (http://\S+)", log).group(1)
    assert url == f"http://127.0.0.1:{port}/"  # loopback by default
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200 and b"<title>Viser</title>" in resp.read()

    client = RosClient(int(ros_env_vars["ROS_DOMAIN_ID"]))
    driver = None
    try:
        r = client.call(SemanticQuery, "/semantic_query", SemanticQuery.Request(query="red mug"))
        assert r.success and r.found
        chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
        if chromium is None or chromedriver is None:
            pytest.skip("the page is served; checking what it shows needs Debian's chromium + chromium-driver")
        import os

        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        os.environ["SE_OFFLINE"] = "true"
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,700",
                    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
        driver.get(url)

        def wait_text(needle: str, timeout: float = 60) -> str:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                text = _page_text(driver)
                if needle in text:
                    return text
                time.sleep(0.3)
            raise AssertionError(f"the page never showed {needle!r}; it shows:\n{_page_text(driver)}")

        text = wait_text("(/semantic_query)")
        assert '"red mug"' in text and "1 instance(s)" in text and "lab" in text
        kitchen = LoadScene.Request(path=str(root / "scenes" / "kitchen"))
        r = client.call(LoadScene, "/ccl_lgs_mapper/load_scene", kitchen)
        assert r.success, r.message
        wait_text("kitchen")
        r = client.call(SemanticQuery, "/semantic_query", SemanticQuery.Request(query="green apple"))
        assert r.success and r.found
        wait_text('"green apple"')
        assert proc.poll() is None
    finally:
        if driver is not None:
            driver.quit()
        client.close()
    assert ros_procs.stop(proc) == 0
