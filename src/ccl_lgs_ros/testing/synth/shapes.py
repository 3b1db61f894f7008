"""Analytic shapes of the synthetic scenes: vectorised ray casting and surface sampling.

Every shape lives in the scene's local frame (metres, z up). A ray batch is ``origins [N,3]``
and ``dirs [N,3]`` (not necessarily unit length); :meth:`Shape.intersect` returns the ray
parameter ``t [N]`` of the first hit in front of the origin (``inf`` on a miss) and the outward
unit normal ``[N,3]`` there, so ``origin + t * dir`` is the hit point whatever the dirs' length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-6


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class Shape:
    """Base class: an instance id (0 = background), an albedo and a texture seed."""

    instance_id: int
    albedo: np.ndarray  # [3] linear RGB 0..1
    texture: str = "noise"  # "noise" | "wood" | "checker" | "plain"
    texture_seed: int = 0

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def area(self) -> float:
        raise NotImplementedError

    def bounds(self) -> tuple[np.ndarray, float] | None:
        """Bounding sphere ``(center [3], radius)`` used to skip rays that miss, or ``None``."""
        return None

    def sample_surface(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points ``[n,3]`` uniformly distributed over the surface area."""
        raise NotImplementedError


@dataclass
class Box(Shape):
    """Box with centre ``center``, half extents ``half`` and a rotation ``yaw`` about z."""

    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    half: np.ndarray = field(default_factory=lambda: np.full(3, 0.05))
    yaw: float = 0.0

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        R = _yaw_matrix(self.yaw)
        o = (origins - self.center) @ R  # [N,3] in box axes
        d = dirs @ R
        n = len(o)
        # Slab method, one axis at a time on 1D arrays (much faster than [N,3] fancy indexing).
        t_in = np.full(n, -np.inf)
        t_out = np.full(n, np.inf)
        axis = np.zeros(n, dtype=np.int8)
        sign = np.zeros(n)
        for a in range(3):
            da = d[:, a]
            da = np.where(np.abs(da) < 1e-12, 1e-12, da)
            t0 = (-self.half[a] - o[:, a]) / da
            t1 = (self.half[a] - o[:, a]) / da
            near = np.minimum(t0, t1)
            better = near > t_in
            t_in = np.where(better, near, t_in)
            axis = np.where(better, a, axis)
            sign = np.where(better, -np.sign(da), sign)
            t_out = np.minimum(t_out, np.maximum(t0, t1))
        hit = (t_in <= t_out) & (t_in > _EPS)
        t = np.where(hit, t_in, np.inf)
        n_local = np.zeros((n, 3))
        for a in range(3):
            n_local[:, a] = np.where(axis == a, sign, 0.0)
        return t, n_local @ R.T

    def area(self) -> float:
        a, b, c = 2 * self.half
        return float(2 * (a * b + b * c + a * c))

    def bounds(self) -> tuple[np.ndarray, float]:
        return np.asarray(self.center, dtype=np.float64), float(np.linalg.norm(self.half))

    def sample_surface(self, n: int, rng: np.random.Generator) -> np.ndarray:
        full = 2 * self.half
        face_areas = np.array([full[1] * full[2], full[0] * full[2], full[0] * full[1]] * 2)
        faces = rng.choice(6, size=n, p=face_areas / face_areas.sum())
        pts = rng.uniform(-1.0, 1.0, size=(n, 3)) * self.half
        axis = faces % 3
        sign = np.where(faces < 3, 1.0, -1.0)
        pts[np.arange(n), axis] = sign * self.half[axis]
        return pts @ _yaw_matrix(self.yaw).T + self.center


@dataclass
class Sphere(Shape):
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    radius: float = 0.05

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        oc = origins - self.center
        a = np.einsum("ij,ij->i", dirs, dirs)
        b = 2.0 * np.einsum("ij,ij->i", oc, dirs)
        c = np.einsum("ij,ij->i", oc, oc) - self.radius**2
        disc = b * b - 4 * a * c
        sq = np.sqrt(np.maximum(disc, 0.0))
        t0 = (-b - sq) / (2 * a)
        t1 = (-b + sq) / (2 * a)
        t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, np.inf))
        t = np.where(disc >= 0, t, np.inf)
        p = origins + np.where(np.isfinite(t), t, 0.0)[:, None] * dirs
        return t, (p - self.center) / self.radius

    def area(self) -> float:
        return float(4 * np.pi * self.radius**2)

    def bounds(self) -> tuple[np.ndarray, float]:
        return np.asarray(self.center, dtype=np.float64), float(self.radius)

    def sample_surface(self, n: int, rng: np.random.Generator) -> np.ndarray:
        v = rng.standard_normal((n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return self.center + self.radius * v


@dataclass
class Cylinder(Shape):
    """Closed vertical cylinder: base centre ``base`` (bottom cap), ``radius``, ``height``."""

    base: np.ndarray = field(default_factory=lambda: np.zeros(3))
    radius: float = 0.04
    height: float = 0.1

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        o = origins - self.base
        d = dirs
        z0, z1 = 0.0, self.height
        # Side: (ox + t dx)^2 + (oy + t dy)^2 = r^2.
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = 2 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1])
        c = o[:, 0] ** 2 + o[:, 1] ** 2 - self.radius**2
        disc = b * b - 4 * a * c
        sq = np.sqrt(np.maximum(disc, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = (-b - sq) / (2 * a)
        zs = o[:, 2] + ts * d[:, 2]
        side_ok = (disc >= 0) & (a > 1e-12) & (ts > _EPS) & (zs >= z0) & (zs <= z1)
        t_side = np.where(side_ok, ts, np.inf)
        # Caps: planes z = z0 (normal -z) and z = z1 (normal +z).
        t_cap = np.full(len(o), np.inf)
        n_cap_z = np.zeros(len(o))
        for zc, nz in ((z0, -1.0), (z1, 1.0)):
            with np.errstate(divide="ignore", invalid="ignore"):
                tc = (zc - o[:, 2]) / d[:, 2]
            px = o[:, 0] + tc * d[:, 0]
            py = o[:, 1] + tc * d[:, 1]
            ok = np.isfinite(tc) & (tc > _EPS) & (px * px + py * py <= self.radius**2) & (tc < t_cap)
            t_cap = np.where(ok, tc, t_cap)
            n_cap_z = np.where(ok, nz, n_cap_z)
        use_side = t_side <= t_cap
        t = np.where(use_side, t_side, t_cap)
        p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
        normals = np.zeros_like(o)
        normals[:, 0] = np.where(use_side, p[:, 0] / self.radius, 0.0)
        normals[:, 1] = np.where(use_side, p[:, 1] / self.radius, 0.0)
        normals[:, 2] = np.where(use_side, 0.0, n_cap_z)
        return t, normals

    def area(self) -> float:
        return float(2 * np.pi * self.radius * self.height + 2 * np.pi * self.radius**2)

    def bounds(self) -> tuple[np.ndarray, float]:
        center = np.asarray(self.base, dtype=np.float64) + [0.0, 0.0, self.height / 2]
        return center, float(np.hypot(self.radius, self.height / 2))

    def sample_surface(self, n: int, rng: np.random.Generator) -> np.ndarray:
        side = 2 * np.pi * self.radius * self.height
        cap = np.pi * self.radius**2
        kind = rng.choice(3, size=n, p=np.array([side, cap, cap]) / (side + 2 * cap))
        phi = rng.uniform(0, 2 * np.pi, n)
        # Area-uniform radius on the caps.
        r = np.where(kind == 0, self.radius, self.radius * np.sqrt(rng.uniform(0, 1, n)))
        z = np.where(kind == 0, rng.uniform(0, self.height, n), np.where(kind == 1, 0.0, self.height))
        return self.base + np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


@dataclass
class Room(Shape):
    """The inside of an axis-aligned box (floor, walls, ceiling), seen from within."""

    lo: np.ndarray = field(default_factory=lambda: np.array([-3.0, -3.0, 0.0]))
    hi: np.ndarray = field(default_factory=lambda: np.array([3.0, 3.0, 2.6]))

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)
            t_far = np.maximum((self.lo - origins) * inv, (self.hi - origins) * inv)
        axis = np.argmin(t_far, axis=1)
        idx = np.arange(len(origins))
        t = t_far[idx, axis]
        t = np.where(t > _EPS, t, np.inf)
        normals = np.zeros_like(origins)
        normals[idx, axis] = -np.sign(dirs[idx, axis])  # facing back into the room
        return t, normals

    def area(self) -> float:
        a, b, c = self.hi - self.lo
        return float(2 * (a * b + b * c + a * c))

    def sample_surface(self, n: int, rng: np.random.Generator) -> np.ndarray:
        box = Box(0, self.albedo, center=(self.lo + self.hi) / 2, half=(self.hi - self.lo) / 2)
        return box.sample_surface(n, rng)


def _candidates(shape: Shape, origins: np.ndarray, dirs: np.ndarray, dd: np.ndarray) -> np.ndarray | None:
    """Indices of the rays that may hit ``shape`` (its bounding sphere), ``None`` = all.

    ``origins`` or ``dirs`` may be a single shared ``[3]`` vector (a camera centre, a light
    direction), which turns the per-ray dot products into one matrix-vector product.
    """
    b = shape.bounds()
    if b is None:
        return None
    center, radius = b
    oc = center - origins  # [3] or [N,3]
    if oc.ndim == 1:
        proj = dirs @ oc
        oc2 = np.full(len(dirs), oc @ oc)
    elif dirs.ndim == 1:
        proj = oc @ dirs
        oc2 = np.einsum("ij,ij->i", oc, oc)
    else:
        proj = np.einsum("ij,ij->i", oc, dirs)
        oc2 = np.einsum("ij,ij->i", oc, oc)
    # Squared distance from the sphere centre to the ray's line; rays pointing away from a
    # sphere they are outside of cannot hit it.
    dist2 = oc2 - proj * proj / dd
    r2 = radius * radius * 1.0001
    return np.flatnonzero((dist2 <= r2) & ((proj > 0) | (oc2 <= r2)))


def _rows(a: np.ndarray, rays: np.ndarray) -> np.ndarray:
    return a[rays] if a.ndim == 2 else np.broadcast_to(a, (len(rays), 3))


def cast_rays(shapes: list[Shape], origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First hit of each ray over all shapes.

    Args:
        shapes: the scene.
        origins: ``[N,3]`` ray origins, or one shared origin ``[3]``.
        dirs: ``[N,3]`` ray directions.

    Returns:
        ``t [N]`` (``inf`` on a miss), ``normals [N,3]`` and ``shape_index int32 [N]`` (-1 on a miss).
    """
    n = len(dirs)
    dd = np.einsum("ij,ij->i", dirs, dirs)
    best_t = np.full(n, np.inf)
    best_n = np.zeros((n, 3))
    best_i = np.full(n, -1, dtype=np.int32)
    for i, shape in enumerate(shapes):
        rays = _candidates(shape, origins, dirs, dd)
        if rays is None:
            rays = np.arange(n)
        if rays.size == 0:
            continue
        t, normals = shape.intersect(_rows(origins, rays), dirs[rays])
        closer = t < best_t[rays]
        sel = rays[closer]
        best_t[sel] = t[closer]
        best_n[sel] = normals[closer]
        best_i[sel] = i
    return best_t, best_n, best_i


def any_hit(shapes: list[Shape], origins: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """``bool [N]``: rays from ``origins [N,3]`` along one shared ``direction [3]`` hit a shape."""
    n = len(origins)
    dd = np.full(n, direction @ direction)
    hit = np.zeros(n, dtype=bool)
    for shape in shapes:
        rays = _candidates(shape, origins, direction, dd)
        if rays is None:
            rays = np.arange(n)
        if rays.size == 0:
            continue
        t, _ = shape.intersect(origins[rays], _rows(direction, rays))
        hit[rays[np.isfinite(t)]] = True
    return hit


def texture_factor(shape: Shape, points: np.ndarray) -> np.ndarray:
    """Multiplicative albedo modulation ``[N]`` around 1 (gives RGB splatting detail to fit)."""
    rng = np.random.default_rng(shape.texture_seed)
    if shape.texture == "plain":
        return np.ones(len(points))
    if shape.texture == "checker":
        cells = np.floor(points[:, :2] / 0.3).astype(np.int64).sum(axis=1)
        return np.where(cells % 2 == 0, 1.06, 0.9)
    if shape.texture == "wood":
        phase = rng.uniform(0, 2 * np.pi)
        grain = np.sin(60.0 * points[:, 0] + 4.0 * np.sin(7.0 * points[:, 1] + phase))
        return 1.0 + 0.12 * grain
    freqs = rng.normal(0.0, 40.0, size=(3, 3))
    phases = rng.uniform(0, 2 * np.pi, size=3)
    waves = np.sin(points @ freqs.T + phases)  # [N,3]
    return 1.0 + 0.08 * waves.sum(axis=1) / np.sqrt(3)
