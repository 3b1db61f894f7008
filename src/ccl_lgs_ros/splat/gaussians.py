"""The trainable Gaussian set: raw parameters, activations, and its ``.npz`` file.

Parameters use gsplat's names so its densification strategies can edit them in place:
``means [N,3]``, ``quats [N,4]`` (w, x, y, z), ``scales [N,3]`` (log of the standard deviations),
``opacities [N]`` (logits), ``sh0 [N,1,3]`` and ``shN [N,K-1,3]`` (SH coefficients). The
activated values are what :func:`.render.rasterize` takes.

File format (``gaussians.npz``, loaded with ``allow_pickle=False``): ``format_version``,
``sh_degree``, ``means``, ``quats``, ``log_scales``, ``opacity_logits``, ``sh0``, ``shN`` and
optionally ``scene_from_world [4,4]`` (the frame the Gaussians live in; identity = world).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..geometry import activate_opacities, activate_scales
from ..io import atomic_save_npz, load_npz, read_json
from .project import SH_C0, num_sh_bases

FORMAT_VERSION = 1


def rgb_to_sh0(rgb: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Colour in 0..1 -> the degree-0 SH coefficient giving it (the renderer adds 0.5)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor | np.ndarray) -> Tensor | np.ndarray:
    return sh0 * SH_C0 + 0.5


class GaussianModel(nn.Module):
    """A set of 3D Gaussians with SH colour (``nn.ParameterDict`` in :attr:`params`)."""

    def __init__(self, params: dict[str, Tensor], sh_degree: int) -> None:
        super().__init__()
        missing = {"means", "quats", "scales", "opacities", "sh0", "shN"} - set(params)
        if missing:
            raise ValueError(f"missing Gaussian parameters: {sorted(missing)}")
        self.sh_degree = int(sh_degree)
        self.params = nn.ParameterDict({k: nn.Parameter(v) for k, v in params.items()})
        n = self.params["means"].shape[0]
        expected = {
            "means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 1, 3),
            "shN": (n, num_sh_bases(self.sh_degree) - 1, 3),
        }  # fmt: skip
        for key, shape in expected.items():
            if tuple(self.params[key].shape) != shape:
                raise ValueError(f"{key}: expected shape {shape}, got {tuple(self.params[key].shape)}")

    # ------------------------------------------------------------------ construction
    @staticmethod
    def from_points(
        points: np.ndarray | Tensor,  # [N, 3]
        colors: np.ndarray | Tensor | None = None,  # [N, 3] in 0..1
        *,
        sh_degree: int = 3,
        init_opacity: float = 0.1,
        init_scale: float = 1.0,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> GaussianModel:
        """Isotropic Gaussians at ``points``, sized by the distance to their 3 nearest neighbours.

        Args:
            points: Centres. [N, 3]
            colors: RGB in 0..1 (grey when ``None``). [N, 3]
            sh_degree: SH degree of the colour.
            init_opacity: Initial opacity of every Gaussian.
            init_scale: Factor on the neighbour-distance scale.
            device: Torch device of the parameters.
            seed: Seed of the random initial rotations.
        """
        from scipy.spatial import cKDTree

        pts = np.asarray(points.detach().cpu() if isinstance(points, Tensor) else points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
            raise ValueError(f"points must be a non-empty [N, 3] array, got shape {pts.shape}")
        n = len(pts)
        rgb = np.full((n, 3), 0.5) if colors is None else np.asarray(colors, dtype=np.float64).reshape(n, 3)
        k = min(4, n)
        if k > 1:
            dist, _ = cKDTree(pts).query(pts, k=k)
            d = np.sqrt((dist[:, 1:] ** 2).mean(axis=1))
        else:
            d = np.ones(n)
        d = np.clip(d, max(np.median(d) * 1e-3, 1e-7), None) * init_scale
        g = torch.Generator().manual_seed(seed)
        K = num_sh_bases(sh_degree)
        params = {
            "means": torch.as_tensor(pts, dtype=torch.float32),
            "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
            "scales": torch.as_tensor(np.log(d), dtype=torch.float32)[:, None].repeat(1, 3),
            "opacities": torch.full((n,), float(np.log(init_opacity / (1 - init_opacity)))),
            "sh0": torch.as_tensor(rgb_to_sh0(rgb), dtype=torch.float32)[:, None, :],
            "shN": torch.zeros(n, K - 1, 3),
        }
        return GaussianModel({k: v.to(device) for k, v in params.items()}, sh_degree)

    # ------------------------------------------------------------------ activated views
    def __len__(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def means(self) -> Tensor:
        return self.params["means"]

    @property
    def quats(self) -> Tensor:
        return self.params["quats"]

    @property
    def log_scales(self) -> Tensor:
        return self.params["scales"]

    @property
    def opacity_logits(self) -> Tensor:
        return self.params["opacities"]

    @property
    def scales(self) -> Tensor:
        return activate_scales(self.params["scales"])

    @property
    def opacities(self) -> Tensor:
        return activate_opacities(self.params["opacities"])

    @property
    def sh(self) -> Tensor:
        """All SH coefficients. [N, K, 3]"""
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    # ------------------------------------------------------------------ files
    def to_numpy(self) -> dict[str, np.ndarray]:
        """Activated float32 arrays: means, quats (unit), scales, opacities, sh [N,K,3], colors (DC RGB)."""
        with torch.no_grad():
            sh = self.sh.detach().cpu().numpy().astype(np.float32)
            return {
                "means": self.means.detach().cpu().numpy().astype(np.float32),
                "quats": torch.nn.functional.normalize(self.quats, dim=-1).cpu().numpy().astype(np.float32),
                "scales": self.scales.cpu().numpy().astype(np.float32),
                "opacities": self.opacities.cpu().numpy().astype(np.float32),
                "sh": sh,
                "colors": np.clip(sh0_to_rgb(sh[:, 0, :]), 0.0, 1.0),
            }

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Raw parameters under their file names (see module docstring)."""
        p = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in self.params.items()}
        return {
            "format_version": np.array(FORMAT_VERSION),
            "sh_degree": np.array(self.sh_degree),
            "means": p["means"],
            "quats": p["quats"],
            "log_scales": p["scales"],
            "opacity_logits": p["opacities"],
            "sh0": p["sh0"],
            "shN": p["shN"],
        }

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray], device: str | torch.device = "cpu") -> GaussianModel:
        version = int(arrays.get("format_version", -1))
        if version < 1 or version > FORMAT_VERSION:
            raise ValueError(f"unsupported Gaussian format_version {version} (this code reads 1..{FORMAT_VERSION})")
        names = {"means": "means", "quats": "quats", "scales": "log_scales", "opacities": "opacity_logits",
                 "sh0": "sh0", "shN": "shN"}  # fmt: skip
        params = {k: torch.as_tensor(np.asarray(arrays[f]), dtype=torch.float32).to(device) for k, f in names.items()}
        return GaussianModel(params, int(arrays["sh_degree"]))

    def save(self, path: str | Path, scene_from_world: np.ndarray | None = None) -> None:
        """Write the ``.npz`` atomically (optionally recording the frame the Gaussians live in)."""
        arrays = self.state_arrays()
        if scene_from_world is not None:
            arrays["scene_from_world"] = np.asarray(scene_from_world, dtype=np.float64)
        atomic_save_npz(path, arrays)

    @staticmethod
    def load(path: str | Path, device: str | torch.device = "cpu") -> GaussianModel:
        return GaussianModel.from_arrays(load_npz(path), device)


def _as64(m: object) -> np.ndarray | None:
    return None if m is None else np.asarray(m, dtype=np.float64)


def _frame_transforms(path: str | Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(scene_from_world, world_from_scene)`` as recorded by the RGB stage, either may be None.

    ``path`` is the stage folder (``rgb.json`` + ``gaussians.npz``) or the ``.npz`` itself. The
    stage record ``rgb.json`` wins; else the Gaussians file's ``scene_from_world``."""
    path = Path(path)
    npz = path / "gaussians.npz" if path.is_dir() else path
    record_path = npz.parent / "rgb.json"
    if record_path.is_file():
        record = read_json(record_path)
        sfw, wfs = record.get("scene_from_world"), record.get("world_from_scene")
        if sfw is not None or wfs is not None:
            return _as64(sfw), _as64(wfs)
    arrays = load_npz(npz)
    return _as64(arrays.get("scene_from_world")), None


def load_scene_from_world(path: str | Path) -> np.ndarray:
    """``scene_from_world`` of the RGB stage: ``rgb.json``, else the Gaussians file, else identity.

    The one reader of the normalisation (``path``: the stage folder or its ``gaussians.npz``)."""
    sfw, wfs = _frame_transforms(path)
    if sfw is not None:
        return sfw
    return np.linalg.inv(wfs) if wfs is not None else np.eye(4)


def load_world_from_scene(path: str | Path) -> np.ndarray:
    """``world_from_scene`` of the RGB stage (the stored one, else the inverse of ``scene_from_world``)."""
    sfw, wfs = _frame_transforms(path)
    if wfs is not None:
        return wfs
    return np.linalg.inv(sfw) if sfw is not None else np.eye(4)
