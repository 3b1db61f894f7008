"""Benchmark of the browser viewer (``ccl-lgs view``) in a real browser, on this machine's CPU.

For each scene size (synthetic Gaussians, the scene the node tests serve, scaled up):

- **open**: from ``load_scene`` of the folder to the first frame in which headless Chromium
  (software WebGL, SwiftShader) draws the splats: ``load_scene`` + :class:`SceneViewer` start +
  ``set_scene`` (covariances, splat buffer) + page load + the splats' transfer over the
  websocket + the client's sort and first draw, detected by asking the page for renders
  (viser's ``get_render``) until one is not the empty background. Target: < 10 s at 1M.
- **query**: the query submitted from the page (the "Find" button clicked in the page, the text
  already typed) until the answer is in the page: the click and the arrival of the answer's text
  are timed inside the page (``performance.now()``, a MutationObserver), so webdriver overhead is
  not counted. The answer's text is sent after the splats' new colours in the same batch, so
  it arriving means the colours have arrived; the repaint after it is not included. Also the
  server's own share (engine query, colour update). Target: < 200 ms at 300k.

    .venv/bin/python bench/bench_viewer.py --sizes 300000 1000000 --queries 10 --out bench/results/viewer

Everything binds 127.0.0.1; Chromium is told that every other host does not exist. Writes
``viewer_bench.json`` and ``viewer_bench.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
QUERIES = ("red mug", "blue bowl")


def machine() -> dict:
    info: dict = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        info["cpu_model"] = names[0] if names else None
    except OSError:
        pass
    info["loadavg_at_start"] = os.getloadavg()
    info["affinity"] = len(os.sched_getaffinity(0))
    import viser

    info["viser"] = viser.__version__ if hasattr(viser, "__version__") else "?"
    chromium = shutil.which("chromium")
    if chromium:
        info["chromium"] = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    return info


def make_scene(dest: Path, gaussians: int) -> None:
    sys.path.insert(0, str(REPO / "test" / "ros"))
    from _rosutil import write_blob_scene  # the synthetic scene the node tests serve

    write_blob_scene(dest, labels=QUERIES, centers=((2.0, 0.0, 0.8), (2.5, 0.6, 0.8)), num_gaussians=gaussians)


def browser():  # noqa: ANN201 - a selenium WebDriver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,700",
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


CLICK_AND_WAIT = """
const [needle, done] = [arguments[0], arguments[arguments.length - 1]];
const button = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Find');
const seen = () => document.body.innerText.includes(needle);
const t0 = performance.now();
const obs = new MutationObserver(() => { if (seen()) { obs.disconnect(); done(performance.now() - t0); } });
obs.observe(document.body, {subtree: true, childList: true, characterData: true});
button.click();
setTimeout(() => { obs.disconnect(); done(-1); }, 25000);
"""


def run_size(n: int, queries: int, tmp: Path, open_timeout: float) -> dict:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By

    from ccl_lgs_ros.scene import load_scene
    from ccl_lgs_ros.viewer.server import SceneViewer

    scene_dir = tmp / f"scene_{n}"
    make_scene(scene_dir, n)
    driver = browser()
    driver.set_script_timeout(30)
    try:
        t0 = time.perf_counter()
        scene = load_scene(scene_dir)
        t_load = time.perf_counter()
        viewer = SceneViewer(host="127.0.0.1", port=0)
        viewer.set_scene(scene)
        t_set = time.perf_counter()
        driver.get(viewer.url)
        end = time.monotonic() + 120
        while not viewer.server.get_clients() and time.monotonic() < end:
            time.sleep(0.02)
        client = next(iter(viewer.server.get_clients().values()))
        t_conn = time.perf_counter()
        renders, drawn, errors = 0, False, []
        end = time.monotonic() + open_timeout
        while time.monotonic() < end and not drawn:
            try:
                img = client.get_render(240, 320, timeout=max(1.0, end - time.monotonic()))
            except TimeoutError as exc:
                errors.append(str(exc))
                break
            renders += 1
            # Drawn: more than 2 % of the pixels are not the page's near-white background.
            drawn = bool((np.abs(img.astype(np.int16) - 255).max(axis=-1) > 40).mean() > 0.02)
        t_open = time.perf_counter()
        row: dict = {
            "gaussians": scene.num_gaussians,
            "open_s": t_open - t0,
            "splats_drawn": drawn,
            "open_parts_s": {"load_scene": t_load - t0, "viewer_start_and_set_scene": t_set - t_load,
                             "page_connects": t_conn - t_set, "until_drawn": t_open - t_conn},
            "set_scene_ms": viewer.timings_ms,
            "renders_polled": renders,
            "open_timeout_s": open_timeout,
            "render_errors": errors,
        }
        box = driver.find_element(By.XPATH, "//label[normalize-space()='Query']/following::input[1]")
        e2e, server_query, server_show = [], [], []
        for i in range(queries + 1):  # the first one warms the embedding cache: not counted
            text = QUERIES[i % 2]
            box.clear()
            box.send_keys(text)
            end = time.monotonic() + 20
            while viewer.gui_text.value != text and time.monotonic() < end:
                time.sleep(0.01)
            try:
                ms = driver.execute_async_script(CLICK_AND_WAIT, f'"{text}"')
            except TimeoutException:  # the page did not run the script at all (frozen drawing)
                ms = -1.0
            if i == 0:
                continue
            e2e.append(float(ms))
            server_query.append(viewer.timings_ms.get("query", float("nan")))
            server_show.append(viewer.timings_ms.get("show", float("nan")))
        viewer.stop()
    finally:
        driver.quit()

    def stats(v: list[float]) -> dict:
        a = np.asarray(v, dtype=np.float64)
        ok = a[a >= 0]  # -1: the answer did not reach the page within 25 s (counted apart)
        if not ok.size:
            return {"n": 0, "timeouts": int(a.size)}
        return {"p50_ms": float(np.percentile(ok, 50)), "p95_ms": float(np.percentile(ok, 95)),
                "max_ms": float(ok.max()), "n": int(ok.size), "timeouts": int((a < 0).sum())}

    row["query_end_to_end"] = stats(e2e)
    row["query_server_engine"] = stats(server_query)
    row["query_server_show"] = stats(server_show)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["gaussians"] / 1e6 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].plot(n, [r["open_s"] for r in rows], "o-", label="open (to first drawn frame)")
    lost = [(g, r["open_s"]) for g, r in zip(n, rows) if not r["splats_drawn"]]
    if lost:
        axes[0].plot(*zip(*lost), "rx", markersize=10, label="not drawn before the time limit")
    axes[0].plot([1.0], [10.0], "k*", markersize=10, label="target at 1M")
    axes[0].set_xlabel("Gaussians (millions)")
    axes[0].set_ylabel("s")
    axes[0].legend(fontsize=8)
    axes[1].plot(n, [r["query_end_to_end"]["p50_ms"] for r in rows], "o-", label="click -> answer in page, p50")
    axes[1].plot(n, [r["query_end_to_end"]["p95_ms"] for r in rows], "o--", label="p95")
    axes[1].plot(n, [r["query_server_show"]["p50_ms"] for r in rows], "s:", label="server: colours + nodes, p50")
    axes[1].plot([0.3], [200.0], "k*", markersize=10, label="target at 300k")
    axes[1].set_xlabel("Gaussians (millions)")
    axes[1].set_ylabel("ms")
    axes[1].legend(fontsize=8)
    fig.suptitle("ccl-lgs view in headless Chromium (software WebGL), CPU only")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[300_000, 1_000_000])
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--open-timeout", type=float, default=120.0,
                   help="give up waiting for the first drawn frame after this many seconds (recorded)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "viewer")
    args = p.parse_args()
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        print("needs Debian's chromium and chromium-driver (scripts/setup.sh installs them as root)")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            row = run_size(n, args.queries, Path(tmp), args.open_timeout)
            print(json.dumps(row), flush=True)
            rows.append(row)
    data = {
        "benchmark": "bench/bench_viewer.py",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": info,
        "loadavg_at_end": os.getloadavg(),
        "note": "the machine was shared with other work while this ran: see loadavg_at_start / loadavg_at_end",
        "targets": {"open_s_at_1M": 10.0, "query_end_to_end_ms_at_300k": 200.0},
        "rows": rows,
    }
    (args.out / "viewer_bench.json").write_text(json.dumps(data, indent=2))
    plot(rows, args.out / "viewer_bench.png")
    print(f"wrote {args.out / 'viewer_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
