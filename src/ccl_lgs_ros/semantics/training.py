"""The optimisation loop shared by every field method, and the CCL-LGS objective.

A method is a :class:`FieldObjective`: it owns the trainable per-Gaussian feature channels (all
levels in one ``[N, C]`` tensor, so one rasterization renders every level), its decoder
parameters, the loss of a batch of rendered views, and how the result becomes a
:class:`~.model.SemanticField`. :func:`optimise` runs Adam (betas 0.9, 0.999) over random batches
of training views, adds the optional 3D spatial regulariser, checkpoints and reports progress.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..distributed import context as dist_context
from ..io import atomic_save_npz, load_npz
from .model import MLPDecoder, SemanticField
from .spatial import SpatialRegularizer
from .views import FieldView, FrozenGaussians, group_by_size, render_features


class FieldObjective(Protocol):
    levels: list[str]
    feature_dim: int

    def colors(self) -> torch.Tensor:
        """Trainable per-Gaussian channels ``[N, len(levels) * feature_dim]``."""
        ...

    def parameters(self) -> list[torch.Tensor]: ...

    def loss(self, views: Sequence[FieldView], rendered: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of views of one size rendered as ``[B, H, W, C]``."""
        ...

    def finish(self, gaussians: FrozenGaussians, views: Sequence[FieldView], backend: str) -> SemanticField: ...


def level_slice(colors: torch.Tensor, li: int, d: int) -> torch.Tensor:
    return colors[..., li * d : (li + 1) * d]


class CCLObjective:
    """CCL-LGS stage 5: cross-entropy of the decoded softmax against the index maps, per level."""

    def __init__(self, n_gaussians: int, levels: Sequence[str], codebooks: dict[str, np.ndarray],
                 feature_dim: int, seed: int = 0, device: str | torch.device = "cpu") -> None:  # fmt: skip
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.levels = list(levels)
        self.feature_dim = feature_dim
        self.codebooks = codebooks
        init = 0.1 * torch.randn(n_gaussians, len(self.levels) * feature_dim, generator=gen)
        self.features = torch.nn.Parameter(init.to(device))
        torch.manual_seed(seed)  # decoder initialisation; nothing else reads the global generator here
        self.decoders = torch.nn.ModuleDict(
            {lv: MLPDecoder(feature_dim, codebooks[lv].shape[0]) for lv in self.levels}
        ).to(device)

    def colors(self) -> torch.Tensor:
        return self.features

    def parameters(self) -> list[torch.Tensor]:
        return [self.features, *self.decoders.parameters()]

    def loss(self, views: Sequence[FieldView], rendered: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total = rendered.new_zeros(())
        metrics = {}
        for li, lv in enumerate(self.levels):
            have = [b for b, v in enumerate(views) if lv in v.targets]
            if not have:
                continue
            target = torch.stack([views[b].targets[lv] for b in have])  # [B, H, W]
            valid = target >= 0
            if not valid.any():
                continue
            feats = level_slice(rendered[have], li, self.feature_dim)[valid]  # [P, d]
            ce = F.cross_entropy(self.decoders[lv](feats), target[valid])
            total = total + ce
            metrics[f"ce_{lv}"] = float(ce.detach())
        return total, metrics

    def finish(self, gaussians: FrozenGaussians, views: Sequence[FieldView], backend: str) -> SemanticField:
        d = self.feature_dim
        feats = self.features.detach().cpu().numpy()
        for dec in self.decoders.values():
            dec.eval()
        return SemanticField(
            method="ccl",
            features={lv: feats[:, li * d : (li + 1) * d].copy() for li, lv in enumerate(self.levels)},
            codebooks=dict(self.codebooks),
            decoders={lv: self.decoders[lv].cpu() for lv in self.levels},  # type: ignore[misc]
        )


def _optimizer_arrays(opt: torch.optim.Adam, params: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    out = {}
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if not st:
            continue
        out[f"opt.{i}.step"] = np.asarray(float(st["step"]))
        out[f"opt.{i}.exp_avg"] = st["exp_avg"].detach().cpu().numpy()
        out[f"opt.{i}.exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().numpy()
    return out


def _restore(arrays: dict[str, np.ndarray], opt: torch.optim.Adam, params: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(torch.as_tensor(arrays[f"param.{i}"], device=p.device))
            if f"opt.{i}.step" in arrays:
                opt.state[p] = {
                    "step": torch.tensor(float(arrays[f"opt.{i}.step"])),
                    "exp_avg": torch.as_tensor(arrays[f"opt.{i}.exp_avg"], device=p.device).clone(),
                    "exp_avg_sq": torch.as_tensor(arrays[f"opt.{i}.exp_avg_sq"], device=p.device).clone(),
                }


def optimise(
    objective: FieldObjective,
    gaussians: FrozenGaussians,
    views: Sequence[FieldView],
    *,
    iterations: int,
    lr: float,
    batch_views: int = 1,
    spatial_lambda: float = 0.0,
    spatial_knn: int = 8,
    backend: str = "auto",
    seed: int = 0,
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
    settings_digest: str = "",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Run Adam over random batches of ``views``; returns ``{"history": [...], "resumed_from": step}``.

    The decoder learns faster than the per-Gaussian features need to move, so both use ``lr``
    (METHOD.md: Adam 1e-3). With ``checkpoint`` set, parameters and Adam moments are written
    atomically every ``checkpoint_every`` steps and training resumes from a checkpoint whose
    ``settings_digest`` matches.
    """
    if not views:
        raise ValueError("no training views with priors")
    ctx = dist_context()  # several ranks: each draws its own batches, gradients averaged every step
    params = objective.parameters()
    lr, betas, eps = ctx.adam_scaling(lr, (0.9, 0.999), 1e-8)
    opt = torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)
    rank_key = [ctx.rank] if ctx.enabled else []
    rng = np.random.default_rng([seed, 0, *rank_key] if ctx.enabled else seed)
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        arrays = load_npz(checkpoint)
        if str(arrays.get("settings_digest", "")) == settings_digest:
            _restore(arrays, opt, params)
            start = int(arrays["step"])
            rng = np.random.default_rng([seed, start, *rank_key])
    if ctx.enabled:  # one start everywhere (the objectives' seeded initialisation should agree anyway)
        ctx.broadcast_(params, "the initial field broadcast")
    bytes0 = ctx.bytes_reduced
    spatial = None
    if spatial_lambda > 0:
        spatial = SpatialRegularizer(gaussians.means.detach().cpu().numpy(), spatial_knn, seed=seed,
                                     device=gaussians.means.device)  # fmt: skip
    groups = group_by_size(views)
    history: list[dict[str, float]] = []
    d = objective.feature_dim
    for step in range(start + 1, iterations + 1):
        group = groups[int(rng.integers(len(groups)))] if len(groups) > 1 else groups[0]
        pick = rng.choice(len(group), size=min(batch_views, len(group)), replace=False)
        batch = [group[int(i)] for i in pick]
        colors = objective.colors()
        rendered = render_features(gaussians, colors, batch, backend)
        loss, metrics = objective.loss(batch, rendered)
        if spatial is not None:
            reg = torch.stack([spatial(level_slice(colors, li, d)) for li in range(len(objective.levels))]).sum()
            loss = loss + spatial_lambda * reg
            metrics["spatial"] = float(reg.detach())
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        if ctx.enabled:
            ctx.average_gradients(params)
        if any(p.grad is not None for p in params):
            opt.step()
        metrics["loss"] = float(loss.detach())
        history.append(metrics)
        if on_step is not None:
            on_step(step, metrics)
        if (checkpoint is not None and checkpoint_every > 0 and step % checkpoint_every == 0 and step < iterations
                and ctx.is_main):
            arrays = {f"param.{i}": p.detach().cpu().numpy() for i, p in enumerate(params)}
            arrays.update(_optimizer_arrays(opt, params))
            arrays["step"] = np.asarray(step)
            arrays["settings_digest"] = np.asarray(settings_digest)
            atomic_save_npz(checkpoint, arrays)
    out: dict[str, Any] = {"history": history, "resumed_from": start}
    if ctx.enabled:
        out.update(ctx.record())
        out["rank_param_digests"] = ctx.check_identical(params, "field parameters")
        out["allreduce_bytes_per_step"] = (ctx.bytes_reduced - bytes0) / max(iterations - start, 1)
    return out
