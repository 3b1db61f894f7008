"""The one PLY module: what it writes, plyfile reads back unchanged, and it reads others' files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from ccl_lgs_ros.ply import colors_to_u8, read_ply_points, write_points_ply


def test_points_round_trip_through_plyfile(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(50, 3)).astype(np.uint8)
    write_points_ply(tmp_path / "c.ply", xyz, rgb)
    data = PlyData.read(str(tmp_path / "c.ply"))
    assert not data.text and data.byte_order in ("<", "=")
    v = data["vertex"]
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), xyz)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), rgb)
    pts, cols = read_ply_points(tmp_path / "c.ply")
    np.testing.assert_array_equal(pts, xyz.astype(np.float64))
    np.testing.assert_allclose(cols * 255.0, rgb)
    write_points_ply(tmp_path / "p.ply", xyz)
    assert read_ply_points(tmp_path / "p.ply")[1] is None


def test_reads_float_colours_and_ascii_files(tmp_path: Path) -> None:
    fields = [("x", "f8"), ("y", "f8"), ("z", "f8"), ("red", "f4"), ("green", "f4"), ("blue", "f4")]
    vertex = np.array([(1.0, 2.0, 3.0, 0.5, 0.25, 1.0)], dtype=fields)
    PlyData([PlyElement.describe(vertex, "vertex")], text=True).write(str(tmp_path / "a.ply"))
    pts, cols = read_ply_points(tmp_path / "a.ply")
    np.testing.assert_array_equal(pts, [[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(cols, [[0.5, 0.25, 1.0]])
    np.testing.assert_array_equal(colors_to_u8(cols), [[128, 64, 255]])
