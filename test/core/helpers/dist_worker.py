"""One rank of test_distributed.py's collective checks; started by torchrun (2 ranks, gloo, 127.0.0.1).

Writes ``OUT/rank_<r>.json`` with what the test compares against hand-computed values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ccl_lgs_ros import distributed as D


def _gaussians(n: int = 6) -> dict[str, torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return {
        "means": torch.nn.Parameter(torch.randn(n, 3, generator=gen)),
        "scales": torch.nn.Parameter(torch.full((n, 3), -5.0)),  # small: growth duplicates, never splits
        "quats": torch.nn.Parameter(torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1)),
        "opacities": torch.nn.Parameter(torch.full((n,), 2.0)),
    }


def _densify(ctx: D.DistContext, synced: bool) -> tuple[int, str]:
    """Two steps of screen-space gradients, different on each rank; the refinement at step 2."""
    from gsplat.strategy import DefaultStrategy

    params = _gaussians()
    opts = {k: torch.optim.Adam([{"params": [p], "lr": 1e-3, "name": k}]) for k, p in params.items()}
    kw = dict(refine_start_iter=0, refine_stop_iter=100, refine_every=2, grow_grad2d=2e-4, reset_every=1000,
              prune_opa=0.005, verbose=False)  # fmt: skip
    strategy = D.synced_default_strategy(ctx, **kw) if synced else DefaultStrategy(**kw)
    state = strategy.initialize_state(scene_scale=1.0)
    n = len(params["means"])
    for step in (1, 2):
        means2d = torch.zeros(1, n, 2, requires_grad=True)
        grad = torch.zeros(1, n, 2)
        grad[0, ctx.rank, 0] = 1e-3  # rank r pushes Gaussian r only: 1e-3 * width / 2 = 5e-3 > grow_grad2d
        means2d.grad = grad
        info = {"width": 10, "height": 10, "n_cameras": 1, "radii": torch.ones(1, n, 2), "gaussian_ids": None,
                "means2d": means2d}  # fmt: skip
        strategy.step_post_backward(params, opts, state, step, info, packed=False)
    return len(params["means"]), D.param_digest(list(params.values()))


def main() -> int:
    out = Path(sys.argv[1])
    ctx = D.init_from_env("cpu", 60)
    res: dict = {"rank": ctx.rank, "world_size": ctx.world_size, "backend": ctx.backend}
    p1, p2, p3 = (torch.nn.Parameter(torch.zeros(k)) for k in (3, 2, 1))
    p1.grad = torch.tensor([1.0, 2.0, 3.0]) * (ctx.rank + 1)
    p2.grad = torch.tensor([5.0, 7.0]) if ctx.rank == 0 else None
    res["sent"] = ctx.average_gradients([p1, p2, p3])
    res["g1"], res["g2"], res["g3"] = p1.grad.tolist(), p2.grad.tolist(), p3.grad
    res["agree"] = ctx.agree(f"from rank {ctx.rank}")
    res["gather"] = ctx.gather_objects(ctx.rank * 10)
    res["synced"] = _densify(ctx, synced=True)
    res["unsynced"] = _densify(ctx, synced=False)
    res["all_synced"] = ctx.gather_objects(res["synced"])
    res["all_unsynced"] = ctx.gather_objects(res["unsynced"])
    # Partitioned Gaussians: rank r owns rows r, r + 2, ...; shares of different sizes come back whole.
    import numpy as np

    rows = D.shard_indices(5, ctx)
    share = {"format_version": np.array(1), "means": np.arange(15, dtype=np.float32).reshape(5, 3)[rows]}
    full = D.gather_gaussians(ctx, share)
    res["shard"] = rows.tolist()
    res["gathered"] = None if full is None else {k: np.asarray(v).tolist() for k, v in full.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank_{ctx.rank}.json").write_text(json.dumps(res))
    D.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
