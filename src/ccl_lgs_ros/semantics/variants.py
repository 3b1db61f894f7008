"""The two seed variants of the semantic field (``field.method``): ``gags`` and ``cgc``.

**gags** (granularity-aware distillation, METHOD.md): a single field of ``d_f`` channels per
Gaussian; an MLP decodes a rendered feature into a CLIP vector ``f_hat [D]`` and granularity logits
(one per priors level, ``s``/``p``/``w``) whose softmax gives weights ``w_l``. Loss per view:

- ``sum_l w_l ||f_hat - f_l||^2`` against each level's CLIP map (mask feature at the pixel),
  region-aware: each mask region's pixels are weighted by ``1 / (area * n_regions)`` so every
  region counts the same whatever its size;
- ``gags_entropy * H(w)`` pushes each pixel to one granularity;
- ``gags_consistency *`` the area-normalised spread of the rendered features inside each mask.

Query index: the decoded per-Gaussian vectors are quantised by spherical k-means into
``codebook_size`` prototypes (the level ``"g"`` codebook), so the query engine's codebook lookup
applies unchanged; 2D relevance decodes pixel vectors directly.

**cgc** (contrastive Gaussian clustering): per level, a unit feature per Gaussian (the raw
parameters are normalised before rendering, so a pixel is a convex blend of directions); in each view the
rendered features of sampled pixels are classified against the normalised means of the view's
masks (``softmax(cos / tau)``, cross-entropy to the pixel's own mask): same mask pulled together,
different masks pushed apart, no cross-view identity needed. The 3D spatial regulariser is on.
Afterwards the Gaussians' features are clustered (spherical k-means, ``codebook_size``
centroids); each cluster's CLIP prototype is the mean mask feature of the training pixels it
renders to. Per-Gaussian codes = nearest centroid, exactly like the CCL codebook for queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .codebook import kmeanspp_init
from .model import GAGS_LEVEL, MLPDecoder, SemanticField
from .training import level_slice
from .views import FieldView, FrozenGaussians, group_by_size, render_features

CGC_TEMPERATURE = 0.1
CGC_PIXELS = 2048
GAGS_TEMPERATURE = 0.05


def spherical_kmeans(
    x: np.ndarray, k: int, iterations: int = 20, seed: int = 0, weights: np.ndarray | None = None,
    max_fit: int = 100_000,
) -> np.ndarray:  # fmt: skip
    """Unit centroids ``[k, d]`` of unit rows ``x [M, d]`` (cosine k-means, k-means++ seeding).

    Fits on at most ``max_fit`` rows (weighted sampling when ``weights`` are given).
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if len(x) > max_fit:
        p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
        x = x[rng.choice(len(x), size=max_fit, replace=False, p=p)]
        weights = None
    w = np.ones(len(x), np.float32) if weights is None else np.asarray(weights, np.float32)
    cen = kmeanspp_init(x, k, rng)
    for _ in range(iterations):
        assign = np.argmax(x @ cen.T, axis=1)
        sums = np.zeros_like(cen)
        np.add.at(sums, assign, x * w[:, None])
        norms = np.linalg.norm(sums, axis=1)
        alive = norms > 1e-9
        cen[alive] = sums[alive] / norms[alive, None]
    return cen.astype(np.float32)


def _region_weights(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask ids ``m [P] >= 0`` -> (compact ids [P], weight [P] = 1 / (area * n_regions))."""
    uniq, compact = torch.unique(m, return_inverse=True)
    area = torch.bincount(compact, minlength=len(uniq)).float()
    return compact, 1.0 / (area[compact] * len(uniq))


class GAGSObjective:
    """Granularity-aware distillation on one feature field (see module docstring)."""

    def __init__(self, n_gaussians: int, prior_levels: Sequence[str], clip_dim: int, feature_dim: int,
                 codebook_size: int, entropy: float = 0.1, consistency: float = 0.1, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:  # fmt: skip
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.levels = [GAGS_LEVEL]
        self.prior_levels = list(prior_levels)
        self.feature_dim = feature_dim
        self.clip_dim = clip_dim
        self.codebook_size = codebook_size
        self.entropy = entropy
        self.consistency = consistency
        self.seed = seed
        self.features = torch.nn.Parameter((0.1 * torch.randn(n_gaussians, feature_dim, generator=gen)).to(device))
        torch.manual_seed(seed)
        self.decoder = MLPDecoder(feature_dim, clip_dim + len(self.prior_levels)).to(device)

    def colors(self) -> torch.Tensor:
        return self.features

    def parameters(self) -> list[torch.Tensor]:
        return [self.features, *self.decoder.parameters()]

    def loss(self, views: Sequence[FieldView], rendered: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total = rendered.new_zeros(())
        parts = {"distill": 0.0, "entropy": 0.0, "consistency": 0.0}
        for b, view in enumerate(views):
            feat = rendered[b]  # [H, W, d]
            out = self.decoder(feat)
            vec = F.normalize(out[..., : self.clip_dim], dim=-1)
            logits = out[..., self.clip_dim :]
            present = [li for li, lv in enumerate(self.prior_levels) if lv in view.masks]
            if not present:
                continue
            w = torch.softmax(logits, dim=-1)  # [H, W, L]
            distill = rendered.new_zeros(())
            consist = rendered.new_zeros(())
            any_valid = torch.zeros(feat.shape[:2], dtype=torch.bool, device=feat.device)
            for li in present:
                lv = self.prior_levels[li]
                m = view.masks[lv]
                valid = m >= 0
                if not valid.any():
                    continue
                any_valid |= valid
                mv = m[valid]
                compact, weight = _region_weights(mv)
                target = view.mask_features[lv][mv]  # [P, D]
                err = ((vec[valid] - target) ** 2).sum(-1)
                distill = distill + (w[..., li][valid] * err * weight).sum()
                if self.consistency > 0:
                    fv = feat[valid]
                    n_reg = int(compact.max()) + 1
                    sums = fv.new_zeros(n_reg, fv.shape[1]).index_add_(0, compact, fv)
                    counts = torch.bincount(compact, minlength=n_reg).float()[:, None]
                    spread = ((fv - (sums / counts)[compact]) ** 2).sum(-1)
                    consist = consist + (spread * weight).sum()
            ent = -(w * torch.log(w.clamp_min(1e-8))).sum(-1)[any_valid].mean() if any_valid.any() else distill * 0
            total = total + distill + self.entropy * ent + self.consistency * consist
            parts["distill"] += float(distill.detach())
            parts["entropy"] += float(ent.detach())
            parts["consistency"] += float(consist.detach())
        n = max(1, len(views))
        return total / n, {k: v / n for k, v in parts.items()}

    def finish(self, gaussians: FrozenGaussians, views: Sequence[FieldView], backend: str) -> SemanticField:
        self.decoder.eval()
        feats = self.features.detach()
        vec = F.normalize(self.decoder(feats)[:, : self.clip_dim], dim=-1).cpu().numpy()
        weights = gaussians.opacities.detach().cpu().numpy()
        codebook = spherical_kmeans(vec, self.codebook_size, seed=self.seed, weights=weights)
        return SemanticField(
            method="gags",
            features={GAGS_LEVEL: feats.cpu().numpy()},
            codebooks={GAGS_LEVEL: codebook},
            decoders={GAGS_LEVEL: self.decoder.cpu()},
            temperature=GAGS_TEMPERATURE,
        )


class CGCObjective:
    """Contrastive clustering of rendered features from per-view masks (see module docstring)."""

    def __init__(self, n_gaussians: int, levels: Sequence[str], feature_dim: int, codebook_size: int,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:  # fmt: skip
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.levels = list(levels)
        self.feature_dim = feature_dim
        self.codebook_size = codebook_size
        self.seed = seed
        self.gen = torch.Generator(device="cpu").manual_seed(seed + 1)
        # Small raw vectors (like the CCL field's): the features are used as directions, and
        # Adam's step per coordinate is about lr whatever the norm, so the norm sets how fast a
        # direction turns. From unit-variance rows (norm ~sqrt(d)) 300 steps of 1e-2 left each
        # object's Gaussians pointing in scattered directions (mean resultant length ~0.35).
        init = 0.1 * torch.randn(n_gaussians, len(self.levels) * feature_dim, generator=gen)
        self.features = torch.nn.Parameter(init.to(device))

    def colors(self) -> torch.Tensor:
        # Unit features per level: a pixel renders a convex blend of its Gaussians' directions.
        # Free-norm features let the contrastive loss on rendered pixels be met by blends of
        # large, cancelling vectors, which leaves each Gaussian's own direction (what the clusters,
        # the 3D spatial regulariser and the query read) meaningless.
        d = self.feature_dim
        return torch.cat([F.normalize(level_slice(self.features, li, d), dim=-1) for li in range(len(self.levels))],
                         dim=1)  # fmt: skip

    def parameters(self) -> list[torch.Tensor]:
        return [self.features]

    def loss(self, views: Sequence[FieldView], rendered: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total = rendered.new_zeros(())
        metrics = {}
        for li, lv in enumerate(self.levels):
            level_loss = rendered.new_zeros(())
            for b, view in enumerate(views):
                if lv not in view.masks:
                    continue
                m = view.masks[lv].reshape(-1)
                idx = torch.nonzero(m >= 0)[:, 0]
                if idx.numel() < 2:
                    continue
                if idx.numel() > CGC_PIXELS:
                    idx = idx[torch.randperm(idx.numel(), generator=self.gen)[:CGC_PIXELS].to(idx.device)]
                f = F.normalize(
                    level_slice(rendered[b], li, self.feature_dim).reshape(-1, self.feature_dim)[idx], dim=-1
                )
                uniq, compact = torch.unique(m[idx], return_inverse=True)
                if len(uniq) < 2:
                    continue
                means = F.normalize(f.new_zeros(len(uniq), f.shape[1]).index_add_(0, compact, f), dim=-1)
                level_loss = level_loss + F.cross_entropy(f @ means.T / CGC_TEMPERATURE, compact)
            total = total + level_loss / max(1, len(views))
            metrics[f"contrast_{lv}"] = float(level_loss.detach()) / max(1, len(views))
        return total, metrics

    @torch.no_grad()
    def finish(self, gaussians: FrozenGaussians, views: Sequence[FieldView], backend: str) -> SemanticField:
        d = self.feature_dim
        feats = self.colors().detach()
        weights = gaussians.opacities.detach().cpu().numpy()
        centroids = {}
        for li, lv in enumerate(self.levels):
            g = F.normalize(level_slice(feats, li, d), dim=-1).cpu().numpy()
            centroids[lv] = spherical_kmeans(g, self.codebook_size, seed=self.seed, weights=weights)
        codebooks = self._cluster_prototypes(gaussians, views, backend, centroids)
        return SemanticField(
            method="cgc",
            features={lv: feats[:, li * d : (li + 1) * d].cpu().numpy() for li, lv in enumerate(self.levels)},
            codebooks=codebooks,
            centroids=centroids,
            temperature=CGC_TEMPERATURE,
        )

    def _cluster_prototypes(self, gaussians: FrozenGaussians, views: Sequence[FieldView], backend: str,
                            centroids: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # fmt: skip
        """Each cluster's CLIP prototype: mean mask feature over the training pixels it renders to."""
        d = self.feature_dim
        sums: dict[str, torch.Tensor] = {}
        overall: dict[str, torch.Tensor] = {}
        for group in group_by_size(views):
            for start in range(0, len(group), 4):
                batch = group[start : start + 4]
                rendered = render_features(gaussians, self.colors().detach(), batch, backend)
                for li, lv in enumerate(self.levels):
                    cen = torch.as_tensor(centroids[lv], device=rendered.device)
                    for b, view in enumerate(batch):
                        if lv not in view.masks:
                            continue
                        m = view.masks[lv]
                        valid = m >= 0
                        if not valid.any():
                            continue
                        f = F.normalize(level_slice(rendered[b], li, d)[valid], dim=-1)
                        cluster = (f @ cen.T).argmax(-1)
                        clip = view.mask_features[lv][m[valid]]  # [P, D]
                        if lv not in sums:
                            sums[lv] = clip.new_zeros(len(cen), clip.shape[1])
                            overall[lv] = clip.new_zeros(clip.shape[1])
                        sums[lv].index_add_(0, cluster, clip)
                        overall[lv] += clip.sum(0)
        out = {}
        for lv in self.levels:
            if lv not in sums:
                raise ValueError(f"no training pixels with masks at level {lv!r}")
            s = sums[lv]
            empty = s.norm(dim=-1) < 1e-9
            s[empty] = overall[lv]  # unseen clusters: the scene's mean feature (low relevance to anything)
            out[lv] = F.normalize(s, dim=-1).cpu().numpy().astype(np.float32)
        return out
