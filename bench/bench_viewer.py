"""Benchmark of the browser viewer (``ccl-lgs view``) in a real browser, on this machine's CPU.

For each scene size (synthetic Gaussians, the scene the node tests serve, scaled up):

- **open**: from ``load_scene`` of the folder to the first frame in which headless Chromium
  (software WebGL, SwiftShader, a 1000x700 window) shows the splats: ``load_scene`` +
  :class:`SceneViewer` start + ``set_scene`` (covariances, level of detail, splat buffer) +
  page load + the splats' transfer over the websocket + the client's sort and first draw,
  detected from screenshots of the page (webdriver's, which wait for the page's next composited
  frame) until more than 2 % of the 3D view is not its empty background. Target: < 10 s at 1M.
  The viewer draws at most ``--max-splats`` of the scene's Gaussians (its level of detail,
  ``viewer.max_splats``; each row records the budget and ``splats_sent``); 0 draws them all.
  (Until 2026-12-07 the bench asked the page for 240x320 renders with viser's ``get_render``:
  each one is an extra frame to draw, and at that size the synthetic scene's 300k+ Gaussians are
  under the client's minimum splat size and were never drawn, so "not drawn" was partly the
  probe's own doing.)
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
import io
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
from PIL import Image

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


BROWSER_ARGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,700",
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")
#: Chromium's own software compositor for the page (what it uses where no GPU is usable) instead
#: of compositing through SwiftShader too; WebGL stays on SwiftShader.
SOFTWARE_COMPOSITING = ("--disable-gpu-compositing",)


def browser(extra: tuple[str, ...] = ()):  # noqa: ANN201 - a selenium WebDriver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in (*BROWSER_ARGS, *extra):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


CANVAS_RECT = """
const c = document.querySelector('canvas');
if (!c) return null;
const r = c.getBoundingClientRect();
return [r.left, r.top, r.width, r.height];
"""

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


def run_size(n: int, queries: int, tmp: Path, open_timeout: float, max_splats: int,
             extra_args: tuple[str, ...] = ()) -> dict:  # fmt: skip
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By

    from ccl_lgs_ros.scene import load_scene
    from ccl_lgs_ros.viewer.server import SceneViewer

    scene_dir = tmp / f"scene_{n}"
    make_scene(scene_dir, n)
    driver = browser(extra_args)
    driver.set_script_timeout(30)
    try:
        t0 = time.perf_counter()
        scene = load_scene(scene_dir)
        t_load = time.perf_counter()
        viewer = SceneViewer(host="127.0.0.1", port=0, max_splats=max_splats)
        viewer.set_scene(scene)
        t_set = time.perf_counter()
        driver.get(viewer.url)
        end = time.monotonic() + 120
        while not viewer.server.get_clients() and time.monotonic() < end:
            time.sleep(0.02)
        t_conn = time.perf_counter()
        shots, drawn, errors, rect = 0, False, [], None
        end = time.monotonic() + open_timeout
        while time.monotonic() < end and not drawn:
            try:  # what the page shows: a screenshot waits for the page's next composited frame
                png = driver.get_screenshot_as_png()
            except TimeoutException as exc:
                errors.append(str(exc))
                break
            shots += 1
            if rect is None:
                rect = driver.execute_script(CANVAS_RECT)
            img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
            if rect:
                left, top, width, height = (int(round(x)) for x in rect)
                img = img[top:top + height, left:left + width]  # the 3D view only, not the panel
            # Drawn: more than 2 % of the 3D view's pixels are not its near-white background.
            drawn = bool(rect) and bool((np.abs(img - 255).max(axis=-1) > 40).mean() > 0.02)
            if not drawn:
                time.sleep(0.1)
        t_open = time.perf_counter()
        row: dict = {
            "gaussians": scene.num_gaussians,
            "max_splats": max_splats,
            "browser_args": [*BROWSER_ARGS, *extra_args],
            "splats_sent": len(viewer.shown),
            "open_s": t_open - t0,
            "splats_drawn": drawn,
            "open_parts_s": {"load_scene": t_load - t0, "viewer_start_and_set_scene": t_set - t_load,
                             "page_connects": t_conn - t_set, "until_drawn": t_open - t_conn},
            "set_scene_ms": viewer.timings_ms,
            "screenshots_taken": shots,
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

    def key(r: dict) -> tuple[bool, int]:
        return any("disable-gpu-compositing" in a for a in r.get("browser_args", [])), int(r.get("max_splats", 0))

    def label(k: tuple[bool, int]) -> str:
        sw, budget = k
        return ("all splats" if not budget else f"max_splats {budget // 1000}k") + (", sw compositing" if sw else "")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    budgets = sorted({key(r) for r in rows}, key=lambda k: (k[0], k[1] == 0, k[1]))
    for k, budget in enumerate(budgets):
        rs = sorted((r for r in rows if key(r) == budget), key=lambda r: r["gaussians"])
        n = [r["gaussians"] / 1e6 for r in rs]
        colour = f"C{k}"
        axes[0].plot(n, [r["open_s"] for r in rs], "o-", color=colour, label=f"open, {label(budget)}")
        lost = [(g, r["open_s"]) for g, r in zip(n, rs) if not r["splats_drawn"]]
        if lost:
            axes[0].plot(*zip(*lost), "x", color="red", markersize=10)
        q = [(g, r["query_end_to_end"].get("p50_ms")) for g, r in zip(n, rs) if r["query_end_to_end"].get("n")]
        if q:
            axes[1].plot(*zip(*q), "o-", color=colour, label=f"click -> answer in page p50, {label(budget)}")
    axes[0].plot([], [], "x", color="red", label="not drawn before the time limit")
    axes[0].plot([1.0], [10.0], "k*", markersize=10, label="target at 1M")
    axes[0].set_xlabel("Gaussians in the scene (millions)")
    axes[0].set_ylabel("s (to the first drawn frame)")
    axes[0].legend(fontsize=7)
    axes[1].plot([0.3], [200.0], "k*", markersize=10, label="target at 300k")
    axes[1].set_xlabel("Gaussians in the scene (millions)")
    axes[1].set_ylabel("ms")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=7)
    fig.suptitle("ccl-lgs view in headless Chromium (software WebGL), 2-core CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[300_000, 1_000_000])
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--open-timeout", type=float, default=120.0,
                   help="give up waiting for the first drawn frame after this many seconds (recorded)")
    p.add_argument("--max-splats", type=int, nargs="+", default=None,
                   help="the viewer's splat budgets to measure, each at every size (0 = all; default: "
                        "the viewer's default viewer.max_splats)")
    p.add_argument("--software-compositing", action="store_true",
                   help="Chromium composites the page with its software compositor (--disable-gpu-compositing), "
                        "WebGL still on SwiftShader; recorded in each row's browser_args")
    p.add_argument("--append", action="store_true",
                   help="add the rows to an existing viewer_bench.json in --out (sizes measured in separate "
                        "runs); its machine record is kept and this run's load is added")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "viewer")
    args = p.parse_args()
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        print("needs Debian's chromium and chromium-driver (scripts/setup.sh installs them as root)")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    from ccl_lgs_ros.viewer.server import MAX_SPLATS

    info = machine()
    command = " ".join([Path(sys.executable).name, *sys.argv])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            for budget in args.max_splats if args.max_splats is not None else [MAX_SPLATS]:
                extra = SOFTWARE_COMPOSITING if args.software_compositing else ()
                row = run_size(n, args.queries, Path(tmp), args.open_timeout, budget, extra)
                row["loadavg_after"] = os.getloadavg()
                print(json.dumps(row), flush=True)
                rows.append(row)
    path = args.out / "viewer_bench.json"
    run = {"command": command, "loadavg_at_start": info["loadavg_at_start"], "loadavg_at_end": os.getloadavg()}
    if args.append and path.is_file():
        data = json.loads(path.read_text())
        data.setdefault("runs", []).append(run)
        data["rows"] += rows
    else:
        data = {
            "benchmark": "bench/bench_viewer.py",
            "command": command,
            "machine": info,
            "loadavg_at_end": run["loadavg_at_end"],
            "runs": [run],
            "note": "load average before / after each run and each row is recorded: the 2-core machine is "
                    "shared, and Chromium's software rasteriser itself loads both cores while it draws",
            "targets": {"open_s_at_1M": 10.0, "query_end_to_end_ms_at_300k": 200.0},
            "rows": rows,
        }
    path.write_text(json.dumps(data, indent=2))
    plot(data["rows"], args.out / "viewer_bench.png")
    print(f"wrote {args.out / 'viewer_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
