"""`make demo` as a test: the real ROS 2 pipeline end to end, asserting the demo's own success
criteria (every queried object found with F1 above the floor, written files present)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_end_to_end(tmp_path, ros_env_vars):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "ccl_lgs_ros.ros.demo", "--out", str(out), "--min-f1", "0.6"],
        env=ros_env_vars, capture_output=True, text=True, timeout=880,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success"] is True
    metrics = summary["metrics_3d"]
    assert metrics["num_objects"] >= 5 and metrics["mean_f1"] >= 0.6
    assert metrics["shared_labels"] >= 1  # one label names two objects
    for label, record in summary["per_label"].items():
        assert record["num_pred"] >= 1, label
        assert (out / "renders" / label.replace(" ", "_") / "selection.png").is_file()
        for kind in ("highlight", "relevance_overlay", "relevance_heatmap", "render"):
            assert (out / "renders" / label.replace(" ", "_") / "highlight" / f"{kind}.png").is_file()
        assert len(summary["files"]["relevance"][label]) == 2
    assert list((out / "objects").glob("*.ply"))
    # what RViz would show, drawn from the node's latched topics as received over DDS
    rviz = out / "rviz_preview.png"
    assert summary["files"]["rviz_preview"] == str(rviz) and rviz.stat().st_size > 20_000
