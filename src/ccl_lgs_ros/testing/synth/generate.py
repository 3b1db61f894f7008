"""Procedural table-top scenes in the capture format, with ground truth.

A room (floor, walls) with a table and several named objects of simple shapes and distinct
colours on it, seen by a camera moving along a robot-like arc around the table at about head
height of a mobile manipulator. Written per frame: RGB (Lambertian shading, a key light with
shadows, procedural texture, a little sensor noise), depth (uint16 mm), instance ids (uint16,
0 = none); per instance a ground-truth surface point cloud ``gt/obj_XXXX.ply`` (world frame)
and an entry ``{id, label, gt_points, shape, color}`` in ``ccl_lgs.instances``.

The scene is built in a local frame (z up, table centre at the origin of the floor) and placed
in the capture's world frame by ``world_offset`` (a realistic map frame where the table is not
at the origin), so world-frame round trips are exercised. Deterministic per seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...capture.format import Capture, Frame, Intrinsics, write_image, write_uint16_png
from ...geometry import GL_FROM_CV
from ...ply import write_points_ply
from .shapes import Box, Cylinder, Room, Shape, Sphere, any_hit, cast_rays, texture_factor

GENERATOR_VERSION = 1
TABLE_HEIGHT = 0.72
TABLE_HALF = (0.5, 0.35)  # half length (x) and half width (y) of the table top, metres
BACKGROUND_LABEL = "floor"


@dataclass(frozen=True)
class ObjectKind:
    """A queryable object type: its label, colour and shape."""

    label: str
    color: tuple[float, float, float]
    shape: str  # "mug" | "box" | "ball" | "cylinder" | "bottle" | "plate"
    size: tuple[float, ...]  # shape-specific dimensions, metres


#: Distinct colours; nouns partly shared so "box" relates to both "blue box" and "brown box".
CATALOGUE: tuple[ObjectKind, ...] = (
    ObjectKind("red mug", (0.80, 0.10, 0.10), "mug", (0.045, 0.11)),
    ObjectKind("blue box", (0.10, 0.25, 0.85), "box", (0.14, 0.10, 0.08)),
    ObjectKind("green ball", (0.10, 0.70, 0.20), "ball", (0.055,)),
    ObjectKind("yellow cylinder", (0.92, 0.80, 0.10), "cylinder", (0.035, 0.17)),
    ObjectKind("purple bottle", (0.50, 0.20, 0.70), "bottle", (0.035, 0.18)),
    ObjectKind("orange cube", (1.00, 0.50, 0.05), "box", (0.08, 0.08, 0.08)),
    ObjectKind("white plate", (0.93, 0.93, 0.90), "plate", (0.10, 0.015)),
    ObjectKind("black can", (0.12, 0.12, 0.13), "cylinder", (0.033, 0.12)),
    ObjectKind("pink ball", (0.95, 0.50, 0.70), "ball", (0.045,)),
    ObjectKind("brown box", (0.50, 0.30, 0.15), "box", (0.16, 0.11, 0.10)),
    ObjectKind("cyan cup", (0.10, 0.80, 0.85), "cylinder", (0.035, 0.09)),
)


def _footprint(kind: ObjectKind) -> float:
    """Radius of the object's footprint on the table (for non-overlapping placement)."""
    if kind.shape == "box":
        return float(np.hypot(kind.size[0], kind.size[1]) / 2)
    if kind.shape == "mug":
        return kind.size[0] + 0.03  # the handle sticks out
    return float(kind.size[0])


def _object_shapes(kind: ObjectKind, inst: int, xy: np.ndarray, yaw: float, tex_seed: int) -> list[Shape]:
    albedo = np.asarray(kind.color, dtype=np.float64)
    z = TABLE_HEIGHT
    base = np.array([xy[0], xy[1], z])
    common: dict[str, Any] = {"instance_id": inst, "albedo": albedo, "texture": "noise", "texture_seed": tex_seed}
    if kind.shape == "box":
        half = np.array(kind.size) / 2
        return [Box(**common, center=base + [0, 0, half[2]], half=half, yaw=yaw)]
    if kind.shape == "ball":
        r = kind.size[0]
        return [Sphere(**common, center=base + [0, 0, r], radius=r)]
    if kind.shape in ("cylinder", "plate"):
        return [Cylinder(**common, base=base, radius=kind.size[0], height=kind.size[1])]
    if kind.shape == "bottle":
        r, h = kind.size
        return [
            Cylinder(**common, base=base, radius=r, height=h * 0.72),
            Cylinder(**common, base=base + [0, 0, h * 0.72], radius=r * 0.4, height=h * 0.28),
        ]
    if kind.shape == "mug":
        r, h = kind.size
        direction = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        handle = Box(
            **common,
            center=base + direction * (r + 0.012) + [0, 0, h * 0.5],
            half=np.array([0.014, 0.007, h * 0.3]),
            yaw=yaw,
        )
        return [Cylinder(**common, base=base, radius=r, height=h), handle]
    raise ValueError(f"unknown shape {kind.shape!r}")


def _table_shapes(inst: int) -> list[Shape]:
    albedo = np.array([0.55, 0.40, 0.26])
    hx, hy = TABLE_HALF
    top = Box(inst, albedo, "wood", 7, center=np.array([0, 0, TABLE_HEIGHT - 0.02]), half=np.array([hx, hy, 0.02]))
    leg_h = (TABLE_HEIGHT - 0.04) / 2
    legs = [
        Box(inst, albedo * 0.8, "plain", 0, center=np.array([sx * (hx - 0.05), sy * (hy - 0.05), leg_h]),
            half=np.array([0.025, 0.025, leg_h]))
        for sx in (-1, 1) for sy in (-1, 1)
    ]  # fmt: skip
    return [top, *legs]


def _world_from_local(world_offset: Sequence[float] | np.ndarray | None) -> np.ndarray:
    if world_offset is None:
        return np.eye(4)
    arr = np.asarray(world_offset, dtype=np.float64)
    if arr.shape == (4, 4):
        return arr.copy()
    if arr.shape != (4,):
        raise ValueError("world_offset must be (x, y, z, yaw_deg) or a 4x4 rigid transform")
    T = np.eye(4)
    yaw = np.deg2rad(arr[3])
    T[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    T[:3, 3] = arr[:3]
    return T


def _look_at_gl(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world looking from ``eye`` at ``target`` with z up."""
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, eye
    return c2w


def _camera_path(rng: np.random.Generator, num_frames: int, arc_deg: float) -> list[np.ndarray]:
    """Local-frame OpenGL c2w poses on an arc around the table, with gentle robot-like wobble."""
    start = rng.uniform(0, 2 * np.pi)
    span = np.deg2rad(arc_deg)
    s = np.linspace(0.0, 1.0, num_frames)
    wobble = rng.uniform(0, 2 * np.pi, size=4)
    poses = []
    for u in s:
        az = start + span * u
        # Distance from the table edge varies like a base driving around an obstacle.
        radius = 0.82 + 0.08 * np.sin(2 * np.pi * u * 1.5 + wobble[0])
        height = 1.12 + 0.05 * np.sin(2 * np.pi * u * 2.0 + wobble[1])
        eye = np.array([np.cos(az) * radius * 1.15, np.sin(az) * radius, height])
        target = np.array(
            [0.04 * np.sin(2 * np.pi * u + wobble[2]), 0.04 * np.sin(2 * np.pi * u + wobble[3]), TABLE_HEIGHT + 0.05]
        )
        poses.append(_look_at_gl(eye, target))
    return poses


def _place_objects(rng: np.random.Generator, kinds: list[ObjectKind]) -> list[tuple[np.ndarray, float]]:
    """Non-overlapping table positions (close together, so objects occlude each other)."""
    placed: list[tuple[np.ndarray, float, float]] = []
    lim = np.array([TABLE_HALF[0] - 0.14, TABLE_HALF[1] - 0.12])
    for kind in kinds:
        r = _footprint(kind)
        for attempt in range(2000):
            grow = 1.0 + attempt / 500  # widen the area if the table is crowded
            xy = rng.uniform(-1, 1, 2) * np.minimum(lim * 0.75 * grow, lim)
            if all(np.linalg.norm(xy - p) > r + pr + 0.025 for p, pr, _ in placed):
                break
        else:
            raise ValueError(f"cannot place {len(kinds)} objects on the table without overlap")
        placed.append((xy, r, float(rng.uniform(0, 2 * np.pi))))
    return [(xy, yaw) for xy, _, yaw in placed]


def _write_ply(path: Path, points: np.ndarray) -> None:
    write_points_ply(path, points)


def _render(
    shapes: list[Shape], c2w_local: np.ndarray, intr: Intrinsics, light_dir: np.ndarray, occluders: list[Shape]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast one view: linear RGB ``[H,W,3]``, z-depth ``[H,W]`` (m), instance ids ``[H,W]``."""
    w, h = intr.width, intr.height
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    # OpenCV camera rays with z = 1, so the hit parameter t is the z-depth directly.
    d_cv = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones_like(u)], axis=-1).reshape(-1, 3)
    c2w_cv = c2w_local @ GL_FROM_CV
    dirs = d_cv @ c2w_cv[:3, :3].T
    eye = c2w_cv[:3, 3]
    t, normals, idx = cast_rays(shapes, eye, dirs)
    hit = idx >= 0
    t = np.where(hit, t, 0.0)
    points = eye + t[:, None] * dirs
    albedo = np.zeros((len(t), 3))
    inst = np.zeros(len(t), dtype=np.int64)
    for i, shape in enumerate(shapes):
        sel = idx == i
        if sel.any():
            albedo[sel] = shape.albedo * texture_factor(shape, points[sel])[:, None]
            inst[sel] = shape.instance_id
    # Normals face the camera (the room's already do; closed shapes are seen from outside).
    view = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    flip = np.einsum("ij,ij->i", normals, view) > 0
    normals[flip] *= -1
    lambert = np.clip(normals @ light_dir, 0.0, None)
    shadow_origin = points + normals * 2e-3
    # Only the objects cast shadows, and those fall on the table top or other objects: shadow
    # rays from the floor and walls would cost most of the time and change nothing.
    lit_side = hit & (lambert > 0) & (points[:, 2] > TABLE_HEIGHT - 0.01)
    shadowed = np.zeros(len(t), dtype=bool)
    if lit_side.any():
        shadowed[lit_side] = any_hit(occluders, shadow_origin[lit_side], light_dir)
    fill = 0.5 + 0.5 * normals[:, 2]  # soft sky light from above
    shade = 0.28 + 0.12 * fill + 0.65 * lambert * np.where(shadowed, 0.15, 1.0)
    rgb = albedo * shade[:, None]
    return rgb.reshape(h, w, 3), t.reshape(h, w), inst.reshape(h, w)


def generate_scene(
    out: Path | str,
    *,
    seed: int = 0,
    width: int = 128,
    height: int = 96,
    num_frames: int = 24,
    num_objects: int = 6,
    shared_label: bool = True,
    fov_deg: float = 60.0,
    arc_deg: float = 240.0,
    world_offset: Sequence[float] | np.ndarray | None = (2.0, -1.0, 0.0, 30.0),
    frame_id: str = "map",
    table_instance: bool = True,
    gt_points_per_m2: float = 40000.0,
    noise_std: float = 1.5,
) -> Capture:
    """Write a procedural table-top scene as a capture folder with ground truth.

    Args:
        out: capture folder to write (created; existing frame files are overwritten).
        seed: everything (object choice, placement, path, texture, noise) follows from it.
        width, height: image size in pixels.
        num_frames: number of frames along the camera path.
        num_objects: objects on the table (1 .. len(CATALOGUE) + 1).
        shared_label: two instances share the first label (two "red mug"s), as real scenes do.
        fov_deg: horizontal field of view.
        arc_deg: angle the camera travels around the table.
        world_offset: the capture world frame relative to the scene's local frame, as
            ``(x, y, z, yaw_deg)`` or a 4x4 rigid transform; ``None`` = identity. The default is a
            realistic map frame (table 2 m away from the origin, rotated 30 deg).
        frame_id: the robot's fixed frame name recorded in the capture.
        table_instance: the table is a ground-truth instance labelled "table" (marked
            ``"background": true``) instead of unlabelled background.
        gt_points_per_m2: density of the ground-truth surface samples.
        noise_std: sensor noise of the RGB images (8-bit levels).

    Returns:
        The written :class:`Capture` (as loaded back from disk).
    """
    out = Path(out)
    if num_objects < 1 or num_objects > len(CATALOGUE) + (1 if shared_label else 0):
        raise ValueError(f"num_objects must be in 1..{len(CATALOGUE) + int(shared_label)}")
    if width < 8 or height < 8 or num_frames < 1:
        raise ValueError("width/height must be >= 8 and num_frames >= 1")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(CATALOGUE))
    kinds = [CATALOGUE[i] for i in order]
    if shared_label and num_objects >= 2:
        kinds = [kinds[0], kinds[0], *kinds[1 : num_objects - 1]]
    else:
        kinds = kinds[:num_objects]
    placements = _place_objects(rng, kinds)

    shapes: list[Shape] = []
    instances: list[dict[str, Any]] = []
    per_instance: dict[int, list[Shape]] = {}
    for k, (kind, (xy, yaw)) in enumerate(zip(kinds, placements), start=1):
        parts = _object_shapes(kind, k, xy, yaw, tex_seed=int(rng.integers(1 << 31)))
        shapes += parts
        per_instance[k] = parts
        instances.append(
            {
                "id": k,
                "label": kind.label,
                "gt_points": f"gt/obj_{k:04d}.ply",
                "shape": kind.shape,
                "color": list(kind.color),
            }
        )
    table_id = len(kinds) + 1 if table_instance else 0
    occluders = list(shapes)  # the objects cast shadows (see _render)
    table = _table_shapes(table_id)
    shapes += table
    if table_instance:
        per_instance[table_id] = table
        instances.append(
            {
                "id": table_id,
                "label": "table",
                "gt_points": f"gt/obj_{table_id:04d}.ply",
                "shape": "table",
                "color": [0.55, 0.40, 0.26],
                "background": True,
            }
        )
    shapes.append(Room(0, np.array([0.78, 0.77, 0.74]), "checker", 3))

    world_from_local = _world_from_local(world_offset)
    fx = width / 2 / np.tan(np.deg2rad(fov_deg) / 2)
    intr = Intrinsics(fx=fx, fy=fx, cx=width / 2, cy=height / 2, width=width, height=height)
    light_dir = np.array([0.35, -0.25, 0.9])
    light_dir /= np.linalg.norm(light_dir)

    # Ground-truth surface samples, world frame.
    gt_rng = np.random.default_rng([seed, 1])
    for inst_id, parts in per_instance.items():
        areas = np.array([p.area() for p in parts])
        total = int(np.clip(areas.sum() * gt_points_per_m2, 500, 200_000))
        counts = np.maximum(1, np.round(total * areas / areas.sum()).astype(int))
        pts = np.concatenate([p.sample_surface(int(c), gt_rng) for p, c in zip(parts, counts)])
        pts_world = pts @ world_from_local[:3, :3].T + world_from_local[:3, 3]
        _write_ply(out / f"gt/obj_{inst_id:04d}.ply", pts_world)

    noise_rng = np.random.default_rng([seed, 2])
    frames = []
    for i, c2w_local in enumerate(_camera_path(rng, num_frames, arc_deg)):
        rgb_lin, depth, inst = _render(shapes, c2w_local, intr, light_dir, occluders)
        rgb = np.clip(rgb_lin, 0, 1) ** (1 / 2.2) * 255 + noise_rng.normal(0, noise_std, rgb_lin.shape)
        name = f"frame_{i + 1:06d}.png"
        write_image(out / "images" / name, np.clip(np.round(rgb), 0, 255).astype(np.uint8))
        write_uint16_png(out / "depth" / name, np.clip(np.round(depth * 1000.0), 0, 65535))
        write_uint16_png(out / "instances" / name, inst)
        frames.append(Frame(
            file_path=f"images/{name}", c2w=world_from_local @ c2w_local, intrinsics=intr,
            depth_file_path=f"depth/{name}", instance_file_path=f"instances/{name}", timestamp=1.0e9 + 0.5 * i,
        ))  # fmt: skip

    capture = Capture(root=out, frames=frames, frame_id=frame_id, depth_unit_scale_factor=0.001, instances=instances)
    capture.ccl_extra["synth"] = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "world_from_local": world_from_local.tolist(),
        "background_label": BACKGROUND_LABEL,
        "table_height": TABLE_HEIGHT,
    }
    capture.save()
    return Capture.load(out)
