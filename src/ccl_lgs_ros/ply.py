"""The one PLY reader/writer (plyfile underneath): binary little-endian files, written atomically.

Point clouds are ``float32 x y z`` plus optional ``uint8 red green blue``; any other vertex
layout (the 3DGS Gaussians of :mod:`ccl_lgs_ros.splat.ply`) goes through :func:`write_vertex_ply`.
Every PLY the project writes or reads passes through here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from .io import atomic_write_bytes


def vertex_ply_bytes(vertex: np.ndarray) -> bytes:
    """A binary PLY whose one ``vertex`` element is the structured array ``vertex``."""
    buf = io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")], text=False).write(buf)
    return buf.getvalue()


def write_vertex_ply(path: str | Path, vertex: np.ndarray) -> None:
    atomic_write_bytes(path, vertex_ply_bytes(vertex))


def points_vertex(xyz: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
    """Structured vertices of a point cloud: ``xyz [N, 3]``, optional ``rgb`` uint8 ``[N, 3]``."""
    pts = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if rgb is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(pts.shape[0], dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = pts.T
    if rgb is not None:
        cols = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        vertex["red"], vertex["green"], vertex["blue"] = cols.T
    return vertex


def write_points_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray | None = None) -> None:
    """A point-cloud PLY (``rgb``: uint8 ``[N, 3]`` or None)."""
    write_vertex_ply(path, points_vertex(xyz, rgb))


def colors_to_u8(colors: np.ndarray) -> np.ndarray:
    """Colours in 0..1 -> uint8 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(colors, dtype=np.float64).reshape(-1, 3) * 255), 0, 255).astype(np.uint8)


def read_vertex(path: str | Path) -> np.ndarray:
    """The ``vertex`` element of a PLY as a structured numpy array."""
    return np.asarray(PlyData.read(str(path))["vertex"].data)


def read_ply_points(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(xyz float64 [N, 3], colours float64 [N, 3] in 0..1 or None)`` of a PLY's vertices.

    Integer colours (0..255) are scaled to 0..1; float colours are taken as 0..1 unless some
    exceed 1 (then they are read as 0..255)."""
    v = read_vertex(path)
    xyz = np.stack([np.asarray(v[k], dtype=np.float64) for k in ("x", "y", "z")], axis=1)
    names = v.dtype.names or ()
    if not all(k in names for k in ("red", "green", "blue")):
        return xyz, None
    rgb = np.stack([np.asarray(v[k], dtype=np.float64) for k in ("red", "green", "blue")], axis=1)
    return xyz, rgb / (255.0 if rgb.max(initial=0.0) > 1.0 else 1.0)


__all__ = ["colors_to_u8", "points_vertex", "read_ply_points", "read_vertex", "vertex_ply_bytes", "write_points_ply",
           "write_vertex_ply"]  # fmt: skip
