"""One rank of gsplat's distributed rasterization on CPU (2 gloo ranks under torchrun).

``ccl_lgs_ros.splat.render.rasterize(..., backend="gsplat", distributed=True)``, the call the RGB
stage makes with ``distributed.gsplat_distributed``, runs gsplat's own distributed code (its
all-to-all of the Gaussians each rank's cameras need, and back for the gradients) over gloo,
with gsplat's CUDA kernels replaced by their PyTorch twins exactly as test_splat_gsplat_cpu.py
does (its fixture is reused, not copied), and gsplat's ``all_gather_int32`` (which asserts CUDA
tensors before one ``all_gather_into_tensor``) by a plain gloo ``all_gather`` of the same integers;
every other collective is gsplat's own (``all_to_all`` of the Gaussians with autograd).
Rank r owns Gaussians r, r + 2, ... and renders camera r.
Writes ``OUT/rank_<r>.json``: its image and the gradients of its own Gaussians, and the same from a
plain (not distributed) render of all Gaussians by both cameras with the project's torch backend.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import test_splat_gsplat_cpu as cpu_twins  # noqa: E402

from ccl_lgs_ros import distributed as D  # noqa: E402
from ccl_lgs_ros.splat.render import rasterize  # noqa: E402


def _scene(n: int = 40):
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(n, 3, generator=gen) * 0.4
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=1)
    scales = torch.rand(n, 3, generator=gen) * 0.08 + 0.03
    opacities = torch.rand(n, generator=gen) * 0.6 + 0.3
    colors = torch.rand(n, 3, generator=gen)
    eyes = [torch.tensor([0.0, 0.3, 3.0]), torch.tensor([2.5, -0.4, 1.5])]
    viewmats = torch.stack([cpu_twins._look_at(e) for e in eyes])
    K = torch.tensor([[40.0, 0.0, 16.0], [0.0, 40.0, 12.0], [0.0, 0.0, 1.0]])
    return [means, quats, scales, opacities, colors], viewmats, K[None].repeat(2, 1, 1)


def _all_gather_int32(world_size, value, device=None):  # noqa: ANN001 - gsplat's signature
    """gsplat.distributed.all_gather_int32 for CPU tensors: every rank's integer, as a list."""
    import torch.distributed as dist

    t = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.int)
    out = [torch.empty_like(t) for _ in range(world_size)]
    dist.all_gather(out, t)
    return [int(v) for v in out] if not isinstance(value, torch.Tensor) else out


def _render(params, viewmats, Ks, backend: str, distributed: bool):
    out, _, _ = rasterize(*params, viewmats, Ks, 32, 24, backend=backend, distributed=distributed)
    return out


def main() -> int:
    out_dir = Path(sys.argv[1])
    ctx = D.init_from_env("cpu", 60)
    patcher = pytest.MonkeyPatch()
    gen = cpu_twins.gsplat_on_cpu.__wrapped__(patcher)  # the CPU twins of gsplat's kernels
    next(gen)
    import gsplat.rendering

    patcher.setattr(gsplat.rendering, "all_gather_int32", _all_gather_int32)
    full, viewmats, Ks = _scene()
    rows = D.shard_indices(len(full[0]), ctx)
    mine = [p[rows].clone().requires_grad_(True) for p in full]
    cam = slice(ctx.rank, ctx.rank + 1)
    image = _render(mine, viewmats[cam], Ks[cam], "gsplat", True)
    image.sum().backward()
    # Reference: all Gaussians, both cameras, one process, the project's torch backend.
    ref_params = [p.clone().requires_grad_(True) for p in full]
    ref = _render(ref_params, viewmats, Ks, "torch", False)
    ref.sum().backward()
    res = {
        "image": image.detach().tolist(),
        "ref_image": ref[cam].detach().tolist(),
        "grads": [p.grad.tolist() for p in mine],
        "ref_grads": [p.grad[rows].tolist() for p in ref_params],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank_{ctx.rank}.json").write_text(json.dumps(res))
    patcher.undo()
    D.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
