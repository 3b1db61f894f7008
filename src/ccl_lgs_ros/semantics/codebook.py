"""Contrastive codebook learning (CCL-LGS stage 4, ``../shared/docs/METHOD.md``).

A codebook ``T [N, D]`` of prototypes in the CLIP space is fitted to the mask features of one
level across all frames. Every mask feature ``F_i`` picks its prototype
``j*_i = argmax_j cos(F_i, T_j)`` and

- ``L_max  = 1 - cos(F_i, T_{j*_i})``                                   (fit the features),
- ``L_pull = 1 - cos(T_{j*_i}, T_{j*_k})``      for pairs with ``y_i == y_k != -1``,
- ``L_push = ReLU(cos(T_{j*_i}, T_{j*_k}) - m)`` for pairs with ``y_i != y_k``, both ``!= -1``,

``L = L_max + lambda_pull * L_pull + lambda_push * L_push``. Pairs come from minibatches of masks
drawn from several frames, so the labels of SAM 2's cross-view tracking bind the prototypes of one
object together across views (the point of the method) and keep different objects apart.

Each term is averaged over its own pairs (a batch without pull pairs contributes no pull loss).
Setting ``lambda_pull`` / ``lambda_push`` to zero gives the ablations (codebook only, +pull, +push).

Initialisation is k-means++ on the features; a prototype that no feature selects for a while is
re-seeded on the feature that is currently worst explained (``L_max`` gradients only reach
selected prototypes, so a dead prototype would otherwise never move).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..priors.types import FramePriors


@dataclass
class CodebookLosses:
    """The three terms of one step (scalars) and the total."""

    total: torch.Tensor
    max: torch.Tensor
    pull: torch.Tensor
    push: torch.Tensor


def codebook_losses(
    features: torch.Tensor,  # [B, D] unit vectors
    labels: torch.Tensor,  # [B] int, -1 = unlabelled
    codebook: torch.Tensor,  # [N, D] (need not be normalised)
    lambda_pull: float = 0.25,
    lambda_push: float = 0.25,
    margin: float = 0.7,
    pair_mask: torch.Tensor | None = None,  # [B, B] bool, pairs allowed (default: all i != k)
) -> CodebookLosses:
    """The CCL losses of a minibatch of mask features, exactly as METHOD.md stage 4.

    Args:
        features: unit mask features ``F_i``.
        labels: cross-view labels ``y_i`` (-1: no pull/push for that mask).
        codebook: prototypes ``T_j``; cosines normalise them.
        lambda_pull: weight of the pull term.
        lambda_push: weight of the push term.
        margin: cosine margin ``m`` of the push term.
        pair_mask: which ordered pairs ``(i, k)`` count (default: every ``i != k``).

    Returns:
        :class:`CodebookLosses`; pull / push are means over their pairs, 0 when there are none.
    """
    protos = F.normalize(codebook, dim=-1)
    feats = F.normalize(features.float(), dim=-1)
    sims = feats @ protos.T  # [B, N]
    best = sims.argmax(dim=1)  # [B]
    l_max = (1.0 - sims.gather(1, best[:, None])[:, 0]).mean()

    zero = sims.new_zeros(())
    l_pull, l_push = zero, zero
    if lambda_pull > 0 or lambda_push > 0:
        chosen = protos[best]  # [B, D]
        proto_cos = chosen @ chosen.T  # [B, B]
        b = labels.shape[0]
        allowed = ~torch.eye(b, dtype=torch.bool, device=labels.device)
        if pair_mask is not None:
            allowed &= pair_mask
        labelled = labels >= 0
        both = labelled[:, None] & labelled[None, :] & allowed
        same = both & (labels[:, None] == labels[None, :])
        diff = both & (labels[:, None] != labels[None, :])
        if same.any():
            l_pull = (1.0 - proto_cos[same]).mean()
        if diff.any():
            l_push = F.relu(proto_cos[diff] - margin).mean()
    total = l_max + lambda_pull * l_pull + lambda_push * l_push
    return CodebookLosses(total=total, max=l_max, pull=l_pull, push=l_push)


def kmeanspp_init(features: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with cosine distance: ``n`` rows of ``features`` (unit, float32 [M, D]).

    With fewer distinct features than ``n`` the remaining prototypes are jittered copies, so
    every prototype starts on the data (dead ones get re-seeded during training anyway).
    """
    m = features.shape[0]
    first = int(rng.integers(m))
    chosen = [first]
    dist = 1.0 - features @ features[first]
    for _ in range(1, n):
        d = np.clip(dist, 0.0, None)
        total = float(d.sum())
        idx = int(rng.choice(m, p=d / total)) if total > 1e-9 else int(rng.integers(m))
        chosen.append(idx)
        dist = np.minimum(dist, 1.0 - features @ features[idx])
    protos = features[chosen].astype(np.float32).copy()
    protos += rng.normal(0.0, 1e-3, size=protos.shape).astype(np.float32)
    return protos / np.linalg.norm(protos, axis=1, keepdims=True)


@dataclass
class LevelCodebook:
    """Result for one level: the codebook and each mask's prototype index, per frame."""

    codebook: np.ndarray  # float32 [N, D] unit prototypes
    mask_codes: list[np.ndarray]  # per frame int32 [K_f]: j* of each mask

    def index_map(self, frame: int, masks: np.ndarray) -> np.ndarray:
        """Pixel -> prototype index ``int32 [H, W]`` (-1 where ``masks`` has no mask)."""
        return index_map_from_codes(masks, self.mask_codes[frame])


def index_map_from_codes(masks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``masks int [H, W]`` (-1 = none) + ``codes int [K]`` -> ``int32 [H, W]`` (-1 = none)."""
    lut = np.concatenate([np.asarray(codes, dtype=np.int32), np.array([-1], dtype=np.int32)])
    # Index -1 reads the appended sentinel.
    return lut[np.asarray(masks, dtype=np.int64)]


def assign_codes(features: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """``j* = argmax cos`` of each row of ``features [M, D]``: ``int32 [M]``."""
    if features.shape[0] == 0:
        return np.zeros(0, dtype=np.int32)
    cb = codebook / np.linalg.norm(codebook, axis=1, keepdims=True)
    f = features.astype(np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return np.argmax(f @ cb.T, axis=1).astype(np.int32)


def train_codebook(
    frames: list[FramePriors],
    level: str,
    n_codes: int,
    iterations: int,
    lr: float = 1e-2,
    lambda_pull: float = 0.25,
    lambda_push: float = 0.25,
    margin: float = 0.7,
    frames_per_batch: int = 8,
    max_batch_masks: int = 512,
    reseed_every: int = 50,
    seed: int = 0,
    device: str = "cpu",
    on_step: Callable[[int, CodebookLosses], None] | None = None,
) -> LevelCodebook:
    """Fit the codebook of one level over all ``frames`` (those lacking ``level`` are skipped).

    Args:
        frames: per-frame priors (only ``frames[i].levels[level]`` is read).
        level: level name (``"sp"``, ``"wp"``, ...).
        n_codes: codebook size N.
        iterations: optimisation steps (0: k-means++ initialisation only).
        lr: Adam learning rate.
        lambda_pull: weight of the pull loss (0 disables it).
        lambda_push: weight of the push loss (0 disables it).
        margin: push margin m.
        frames_per_batch: frames whose masks form one minibatch (pairs span these frames).
        max_batch_masks: cap on the masks of one minibatch (random subset beyond it).
        reseed_every: steps between dead-prototype checks.
        seed: random seed.
        device: torch device.
        on_step: called as ``on_step(step, losses)`` after each step (progress).

    Returns:
        :class:`LevelCodebook`.
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    feats_per_frame, labels_per_frame = [], []
    for fp in frames:
        lp = fp.levels.get(level)
        if lp is None or lp.features.shape[0] == 0:
            feats_per_frame.append(np.zeros((0, 0), np.float32))
            labels_per_frame.append(np.zeros(0, np.int32))
            continue
        f = np.asarray(lp.features, dtype=np.float32)
        feats_per_frame.append(f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12))
        labels_per_frame.append(np.asarray(lp.labels, dtype=np.int64))
    nonempty = [i for i, f in enumerate(feats_per_frame) if f.shape[0] > 0]
    if not nonempty:
        raise ValueError(
            f"no mask features at level {level!r}: none of the {len(frames)} frames has a mask at this level, so "
            "there is nothing to learn a codebook from. With the real backend SAM kept no mask: lower "
            "priors.pred_iou_thresh / priors.stability_score_thresh (or priors.min_mask_area), raise "
            "priors.points_per_side, or check priors.sam_checkpoint (the priors stage's warning counts the frames)"
        )
    all_feats = np.concatenate([feats_per_frame[i] for i in nonempty])

    init = kmeanspp_init(all_feats, n_codes, rng)
    codebook = torch.nn.Parameter(torch.from_numpy(init).to(device))
    opt = torch.optim.Adam([codebook], lr=lr)
    last_used = np.zeros(n_codes, dtype=np.int64)  # step each prototype last won a feature
    all_t = torch.from_numpy(all_feats).to(device)

    for step in range(1, iterations + 1):
        pick = rng.choice(nonempty, size=min(frames_per_batch, len(nonempty)), replace=False)
        fb = np.concatenate([feats_per_frame[i] for i in pick])
        lb = np.concatenate([labels_per_frame[i] for i in pick])
        if fb.shape[0] > max_batch_masks:
            sub = torch.randperm(fb.shape[0], generator=gen)[:max_batch_masks].numpy()
            fb, lb = fb[sub], lb[sub]
        feats = torch.from_numpy(fb).to(device)
        labels = torch.from_numpy(lb).to(device)
        losses = codebook_losses(feats, labels, codebook, lambda_pull, lambda_push, margin)
        opt.zero_grad(set_to_none=True)
        losses.total.backward()
        opt.step()
        with torch.no_grad():
            used = (feats @ F.normalize(codebook, dim=-1).T).argmax(1).unique().cpu().numpy()
        last_used[used] = step
        if reseed_every > 0 and step % reseed_every == 0 and step < iterations:
            _reseed_dead(codebook, opt, all_t, last_used, step, reseed_every)
        if on_step is not None:
            on_step(step, losses)

    final = F.normalize(codebook.detach(), dim=-1).cpu().numpy().astype(np.float32)
    codes = [assign_codes(f, final) if f.shape[0] else np.zeros(0, np.int32) for f in feats_per_frame]
    return LevelCodebook(codebook=final, mask_codes=codes)


@torch.no_grad()
def _reseed_dead(
    codebook: torch.nn.Parameter,
    opt: torch.optim.Adam,
    all_feats: torch.Tensor,  # [M, D]
    last_used: np.ndarray,
    step: int,
    window: int,
) -> None:
    """Move prototypes unused for ``window`` steps onto the worst-explained features."""
    dead = np.nonzero(step - last_used >= window)[0]
    if dead.size == 0:
        return
    sims = all_feats @ F.normalize(codebook, dim=-1).T  # [M, N]
    fit = sims.max(dim=1).values
    # Worst-explained features first; each dead prototype takes a different one.
    order = torch.argsort(fit)[: dead.size]
    for j, i in zip(dead.tolist(), order.tolist()):
        codebook[j] = all_feats[i]
        state = opt.state.get(codebook)
        if state:
            state["exp_avg"][j] = 0
            state["exp_avg_sq"][j] = 0
        last_used[j] = step


def train_codebooks(
    frames: list[FramePriors],
    levels: list[str],
    n_codes: int,
    iterations: int,
    **kw,  # forwarded to train_codebook
) -> dict[str, LevelCodebook]:
    """:func:`train_codebook` for each level."""
    return {level: train_codebook(frames, level, n_codes, iterations, **kw) for level in levels}


def split_by_counts(flat: np.ndarray, counts: np.ndarray, n: int) -> list[np.ndarray]:
    """Per-frame arrays back from their concatenation and per-frame lengths."""
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [flat[bounds[i] : bounds[i + 1]] for i in range(n)]
