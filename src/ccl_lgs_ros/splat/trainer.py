"""RGB 3D Gaussian splatting: the ``rgb`` stage of the pipeline.

:func:`train_rgb` reads a capture, normalises the scene, initialises Gaussians (capture point
cloud > depth back-projection > random points in the frusta), optimises L1 + D-SSIM (+ optional
depth L1) with Adam and gsplat's ``DefaultStrategy`` for densification, and writes to ``out_dir``:

- ``ckpt_<step>.npz``: resumable checkpoints (parameters, Adam moments, densification state),
  written atomically every ``rgb.checkpoint_every`` steps; the two newest are kept;
- ``gaussians.npz``: the final Gaussians in the scene frame (:mod:`.gaussians` format);
- ``rgb.json``: ``format_version``, ``scene_from_world``, ``world_from_scene``, the train/test
  split, the settings that shape the output, and the metrics.

Rerunning with ``resume=True`` continues from the newest readable checkpoint, or returns the
recorded metrics when the stage already finished with the same settings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..capture.format import Capture, CaptureError
from ..config import Config, RgbConfig
from ..distributed import context as dist_context
from ..io import atomic_save_npz, atomic_write_json, load_npz, read_json
from ..progress import Progress
from .data import camera_centers, initial_points, load_view, scene_normalization, split_indices
from .evaluate import BACKGROUNDS, evaluate_views
from .gaussians import GaussianModel
from .metrics import ssim
from .render import rasterize, resolve_backend

FORMAT_VERSION = 1
_CKPT = re.compile(r"^ckpt_(\d+)\.npz$")
_KEEP_CHECKPOINTS = 2


def _schedule(rgb: RgbConfig) -> dict[str, int]:
    """Step numbers of densification and SH growth for this run length."""
    it = max(rgb.iterations, 1)
    return {
        "refine_start": int(rgb.refine_start_frac * it),
        "refine_stop": int(rgb.refine_stop_frac * it),
        "refine_every": max(1, min(rgb.refine_every, max(10, it // 20))),
        # The full SH degree is active by mid-run at the latest.
        "sh_interval": max(1, min(rgb.sh_interval, it // (2 * (rgb.sh_degree + 1)))),
    }


def _make_optimizers(model: GaussianModel, rgb: RgbConfig) -> dict[str, torch.optim.Optimizer]:
    lrs = {
        "means": rgb.lr_means, "scales": rgb.lr_scales, "quats": rgb.lr_quats,
        "opacities": rgb.lr_opacities, "sh0": rgb.lr_sh, "shN": rgb.lr_sh / 20.0,
    }  # fmt: skip
    # One optimizer per parameter: gsplat's strategies edit each optimizer's state with its parameter.
    # Several ranks: Adam scaled for the world_size times larger batch (distributed.DistContext.adam_scaling).
    scaled = {k: dist_context().adam_scaling(lr, (0.9, 0.999), 1e-15) for k, lr in lrs.items()}
    return {
        k: torch.optim.Adam([{"params": [model.params[k]], "lr": lr, "name": k}], betas=betas, eps=eps)
        for k, (lr, betas, eps) in scaled.items()
    }


def _strategy(rgb: RgbConfig, sched: dict[str, int], partitioned: bool = False):
    from gsplat.strategy import DefaultStrategy

    ctx = dist_context()
    make: Any = DefaultStrategy
    if ctx.enabled and not partitioned:  # every rank takes the same densify / prune decisions
        from ..distributed import synced_default_strategy

        make = lambda **kw: synced_default_strategy(ctx, **kw)  # noqa: E731
    return make(
        refine_start_iter=sched["refine_start"],
        refine_stop_iter=sched["refine_stop"],
        refine_every=sched["refine_every"],
        grow_grad2d=rgb.grow_grad2d,
        reset_every=max(3000, rgb.iterations + 1),  # opacity reset hurts short runs; off unless long
        verbose=False,
    )


# ---------------------------------------------------------------------- checkpoints
def _checkpoint_arrays(
    step: int,
    model: GaussianModel,
    optimizers: dict[str, torch.optim.Optimizer],
    strategy_state: dict[str, Any],
    elapsed_s: float,
) -> dict[str, np.ndarray]:
    arrays = {f"param/{k}": v for k, v in model.state_arrays().items()}
    arrays["format_version"] = np.array(FORMAT_VERSION)
    arrays["step"] = np.array(step)
    arrays["elapsed_s"] = np.array(elapsed_s)
    for key, opt in optimizers.items():
        param = opt.param_groups[0]["params"][0]
        st = opt.state.get(param, {})
        for name in ("exp_avg", "exp_avg_sq", "step"):
            if name in st:
                arrays[f"opt/{key}/{name}"] = torch.as_tensor(st[name]).detach().cpu().numpy()
    for name in ("grad2d", "count"):
        if strategy_state.get(name) is not None:
            arrays[f"strategy/{name}"] = strategy_state[name].detach().cpu().numpy()
    return arrays


def _list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for p in out_dir.glob("ckpt_*.npz"):
        m = _CKPT.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def _load_latest_checkpoint(out_dir: Path, settings: dict[str, Any]) -> tuple[int, dict[str, np.ndarray]] | None:
    """The newest checkpoint of these settings that reads back completely (older ones are the fallback)."""
    for step, path in _list_checkpoints(out_dir):
        try:
            arrays = load_npz(path)
            if int(arrays["format_version"]) > FORMAT_VERSION or str(arrays["settings"]) != json.dumps(settings):
                continue
            return step, arrays
        except (OSError, ValueError, KeyError, EOFError):
            continue
    return None


def _restore(
    arrays: dict[str, np.ndarray], rgb: RgbConfig, device: torch.device
) -> tuple[GaussianModel, dict[str, torch.optim.Optimizer], dict[str, Any]]:
    model = GaussianModel.from_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("param/")}, device)
    optimizers = _make_optimizers(model, rgb)
    for key, opt in optimizers.items():
        param = opt.param_groups[0]["params"][0]
        if f"opt/{key}/exp_avg" in arrays:
            opt.state[param] = {
                "step": torch.as_tensor(arrays[f"opt/{key}/step"], dtype=torch.float32),
                "exp_avg": torch.as_tensor(arrays[f"opt/{key}/exp_avg"], device=device),
                "exp_avg_sq": torch.as_tensor(arrays[f"opt/{key}/exp_avg_sq"], device=device),
            }
    state: dict[str, Any] = {}
    for name in ("grad2d", "count"):
        if f"strategy/{name}" in arrays:
            state[name] = torch.as_tensor(arrays[f"strategy/{name}"], device=device)
    return model, optimizers, state


def _prune_checkpoints(out_dir: Path) -> None:
    for _, path in _list_checkpoints(out_dir)[_KEEP_CHECKPOINTS:]:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------- training
def _settings(rgb: RgbConfig) -> dict[str, Any]:
    """The settings whose change makes a finished or checkpointed run stale."""
    keys = ("iterations", "downscale", "sh_degree", "holdout_every", "background", "seed", "max_init_points")
    return {k: getattr(rgb, k) for k in keys}


def _view_order(step: int, n: int, seed: int) -> int:
    """Which training view step ``step`` uses: a fresh permutation per epoch, reproducible on resume."""
    epoch, pos = divmod(step, n)
    return int(np.random.default_rng([seed, epoch]).permutation(n)[pos])


def train_rgb(
    capture: Capture,
    cfg: Config,
    out_dir: Path,
    device: str | torch.device = "cpu",
    progress: bool = True,
    resume: bool = True,
) -> dict[str, Any]:
    """Reconstruct the capture as RGB Gaussians (see module docstring for the outputs).

    Args:
        capture: The posed frames.
        cfg: Configuration; the ``rgb`` section is used.
        out_dir: Stage folder (``SCENE/rgb``).
        device: Torch device ("cpu", "cuda", ...).
        progress: Show / emit progress.
        resume: Continue from the newest checkpoint (or return a finished run's metrics).

    Returns:
        Metrics: ``psnr_train``, ``psnr_test``/``ssim_test`` (None without held-out frames),
        ``n_gaussians``, ``init_source``, ``steps``, ``train_time_s``, ``resumed_from``, ...
    """
    ctx = dist_context()
    # Several ranks: iterations / world_size steps of world_size views (distributed.scale_steps).
    rgb = dataclasses.replace(cfg.rgb, iterations=ctx.scaled_steps(cfg.rgb.iterations, cfg.distributed.scale_steps))
    settings = _settings(rgb)
    if ctx.enabled:
        settings["world_size"] = ctx.world_size
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not capture.frames:
        raise CaptureError(f"{capture.root}: the capture has no frames")
    record_path = out_dir / "rgb.json"
    finished = None
    if resume and record_path.is_file() and (out_dir / "gaussians.npz").is_file():
        record = read_json(record_path)
        if record.get("completed") and record.get("settings") == settings:
            finished = dict(record["metrics"], skipped=True)
    if ctx.agree(finished is not None, "the rgb resume decision"):
        return finished or {"skipped": True, **ctx.record()}
    if not resume and ctx.is_main:
        for _, path in _list_checkpoints(out_dir):
            path.unlink(missing_ok=True)
    backend = resolve_backend(rgb.backend, device)
    # distributed.gsplat_distributed: each rank owns a share of the Gaussians (gsplat's distributed
    # rasterization, CUDA only); their gradients are their own, densification is per rank.
    partitioned = ctx.enabled and cfg.distributed.gsplat_distributed
    if partitioned and backend != "gsplat":
        raise ValueError("distributed.gsplat_distributed needs the gsplat backend on CUDA (rgb.backend, device)")
    if partitioned:
        settings["partitioned"] = True  # no checkpoints in this mode: a rerun starts the stage again
    background = BACKGROUNDS[rgb.background]
    train_idx, test_idx = split_indices(len(capture.frames), rgb.holdout_every)
    torch.manual_seed(rgb.seed)

    ckpt = _load_latest_checkpoint(out_dir, settings) if resume and ctx.is_main else None
    if ctx.enabled:  # every rank resumes from rank 0's choice of checkpoint
        ckpt_step = ctx.agree(ckpt[0] if ckpt is not None else None, "the rgb checkpoint choice")
        if not ctx.is_main and ckpt_step is not None:
            ckpt = (ckpt_step, load_npz(out_dir / f"ckpt_{ckpt_step:06d}.npz"))
    if ckpt is not None:
        scene_from_world = np.asarray(ckpt[1]["scene_from_world"], dtype=np.float64)
    else:
        scene_from_world = scene_normalization(camera_centers(capture))
    views = [load_view(capture, i, scene_from_world, rgb.downscale, background, device) for i in train_idx]
    bg = torch.tensor([background], dtype=torch.float32, device=device)

    sched = _schedule(rgb)
    strategy = _strategy(rgb, sched, partitioned) if rgb.densify else None
    scene_scale = 1.1  # cameras lie within distance 1 of the origin after normalisation
    init_source = None
    if ckpt is not None:
        start_step, arrays = ckpt
        model, optimizers, restored = _restore(arrays, rgb, device)
        elapsed0 = float(arrays.get("elapsed_s", 0.0))
        init_source = str(arrays["init_source"]) if "init_source" in arrays else None
    else:
        start_step, elapsed0, restored = 0, 0.0, {}
        pts, cols, init_source = initial_points(capture, views, scene_from_world, rgb.max_init_points, rgb.seed)
        if partitioned:
            from ..distributed import shard_indices

            keep = shard_indices(len(pts), ctx)
            pts, cols = pts[keep], (cols[keep] if cols is not None else None)
        model = GaussianModel.from_points(pts, cols, sh_degree=rgb.sh_degree, device=device, seed=rgb.seed)
        optimizers = _make_optimizers(model, rgb)
    strategy_state = strategy.initialize_state(scene_scale=scene_scale) if strategy else {}
    strategy_state.update(restored)
    if not ctx.is_main:  # rank 0's checkpoint holds the ranks' summed statistics
        for name in ("grad2d", "count"):
            if strategy_state.get(name) is not None:
                strategy_state[name].zero_()
    if not partitioned:
        ctx.broadcast_(list(model.params.values()), "the initial parameter broadcast")
    if strategy is not None:
        strategy.check_sanity(model.params, optimizers)
    means_gamma = 0.01 ** (1.0 / max(rgb.iterations, 1))
    for g in optimizers["means"].param_groups:
        g["lr"] = ctx.adam_scaling(rgb.lr_means)[0] * scene_scale * means_gamma**start_step

    use_depth = rgb.depth_lambda > 0 and any(v.depth is not None for v in views)
    bytes0 = ctx.bytes_reduced
    t0 = time.monotonic()
    last_loss = float("nan")
    with Progress("rgb", rgb.iterations, disable=not progress) as bar:
        if start_step:
            bar.update(start_step, message=f"resumed from step {start_step}")
        for step in range(start_step, rgb.iterations):
            # Rank r of W takes the (step * W + r)-th view of the one-process view order.
            view = views[_view_order(step * ctx.world_size + ctx.rank, len(views), rgb.seed)]
            sh_degree = min(step // sched["sh_interval"], rgb.sh_degree)
            out, _, info = rasterize(
                model.means, model.quats, model.scales, model.opacities, model.sh, view.viewmat[None],
                view.K[None], view.width, view.height, backend=backend, sh_degree=sh_degree,
                backgrounds=bg, render_mode="RGB+ED" if use_depth else "RGB", distributed=partitioned,
            )  # fmt: skip
            pred = out[..., :3]
            if strategy is not None:
                strategy.step_pre_backward(model.params, optimizers, strategy_state, step, info)
            gt = view.image[None]
            loss = (1 - rgb.ssim_lambda) * torch.abs(pred - gt).mean() + rgb.ssim_lambda * (1 - ssim(pred, gt))
            if use_depth and view.depth is not None:
                valid = view.depth > 0
                if valid.any():
                    loss = loss + rgb.depth_lambda * torch.abs(out[0, ..., 3][valid] - view.depth[valid]).mean()
            loss.backward()
            if strategy is not None:
                if rgb.max_gaussians and len(model) >= rgb.max_gaussians:
                    strategy.refine_stop_iter = min(strategy.refine_stop_iter, step)
                strategy.step_post_backward(model.params, optimizers, strategy_state, step, info, packed=False)
            if not partitioned:
                ctx.average_gradients(list(model.params.values()))
            for opt in optimizers.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
            for g in optimizers["means"].param_groups:
                g["lr"] *= means_gamma
            last_loss = float(loss.detach())
            done = step + 1
            if done % rgb.checkpoint_every == 0 and done < rgb.iterations and ctx.enabled:
                from ..distributed import fold_strategy_state

                fold_strategy_state(ctx, strategy_state)
            if done % rgb.checkpoint_every == 0 and done < rgb.iterations and ctx.is_main and not partitioned:
                arrays = _checkpoint_arrays(done, model, optimizers, strategy_state, elapsed0 + time.monotonic() - t0)
                arrays["scene_from_world"] = scene_from_world
                arrays["init_source"] = np.array(init_source or "")
                arrays["settings"] = np.array(json.dumps(settings))
                atomic_save_npz(out_dir / f"ckpt_{done:06d}.npz", arrays)
                _prune_checkpoints(out_dir)
            bar.update(1, loss=round(last_loss, 4), gaussians=len(model))
    train_time = elapsed0 + time.monotonic() - t0
    steps_run = max(rgb.iterations - start_step, 1)
    dist_metrics: dict[str, Any] = {}
    if partitioned:  # rank 0 collects every rank's share of the Gaussians
        from ..distributed import gather_gaussians

        full = gather_gaussians(ctx, model.state_arrays())
        dist_metrics = {**ctx.record(), "partitioned": True, "local_gaussians": ctx.gather_objects(len(model))}
        if full is None:
            return {"steps": rgb.iterations, "train_time_s": round(train_time, 3), **dist_metrics}
        model = GaussianModel.from_arrays(full, device)
    elif ctx.enabled:  # the ranks must hold bit-identical Gaussians; rank 0 alone writes
        dist_metrics = {
            **ctx.record(),
            "rank_param_digests": ctx.check_identical(list(model.params.values()), "RGB Gaussians"),
            "allreduce_bytes_per_step": (ctx.bytes_reduced - bytes0) / steps_run,
        }
        if not ctx.is_main:
            return {"steps": rgb.iterations, "train_time_s": round(train_time, 3), **dist_metrics}

    model.save(out_dir / "gaussians.npz", scene_from_world=scene_from_world)
    with torch.no_grad():
        train_eval = evaluate_views(model, views[: min(len(views), 8)], backend, background)
        test_views = [load_view(capture, i, scene_from_world, rgb.downscale, background, device) for i in test_idx]
        test_eval = evaluate_views(model, test_views, backend, background)
    metrics = {
        "psnr_train": train_eval["psnr"],
        "psnr_test": test_eval["psnr"],
        "ssim_test": test_eval["ssim"],
        "n_test_views": len(test_idx),
        "n_train_views": len(train_idx),
        "n_gaussians": len(model),
        "init_source": init_source,
        "steps": rgb.iterations,
        "final_loss": last_loss,
        "train_time_s": round(train_time, 3),
        "resumed_from": start_step if start_step else None,
        "backend": backend,
        "image_size": [views[0].width, views[0].height],
        **dist_metrics,
    }
    atomic_write_json(record_path, {
        "format_version": FORMAT_VERSION,
        "completed": True,
        "scene_from_world": scene_from_world.tolist(),
        "world_from_scene": np.linalg.inv(scene_from_world).tolist(),
        "train_indices": train_idx,
        "test_indices": test_idx,
        "downscale": rgb.downscale,
        "background": rgb.background,
        "sh_degree": rgb.sh_degree,
        "settings": settings,
        "metrics": metrics,
    })  # fmt: skip
    for _, path in _list_checkpoints(out_dir)[1:]:
        path.unlink(missing_ok=True)
    if not math.isfinite(last_loss) and rgb.iterations:
        raise RuntimeError("RGB training diverged (non-finite loss)")
    return metrics
