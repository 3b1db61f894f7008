"""``ccl-lgs train`` on several processes: torch.distributed under torchrun (ROS-free).

One entry point for 1..N processes. ``ccl-lgs train`` alone is one process and never touches
torch.distributed. Under ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...)
:func:`init_from_env` joins the process group: NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``),
gloo on CPU. ``--nproc N`` / ``distributed.nproc`` without torchrun makes :func:`launch` start
torchrun itself with this same command line (on one machine through
:mod:`ccl_lgs_ros.torchrun_loopback`, so its rendezvous store listens on loopback only).

What each stage does with the ranks (the hooks live in the stages, the machinery here):

- priors: the frames still to compute are split across ranks (``todo[rank::world_size]``) and
  written to the on-disk priors cache; rank 0 then reads them all back and runs the sequential
  cross-view association alone while the others wait;
- rgb and field: data-parallel; every rank holds all parameters, renders its own views, and the
  gradients are averaged across ranks every step (:meth:`DistContext.average_gradients`, one
  all-reduce of a flat buffer); densification statistics are summed across ranks before every
  refinement (:class:`SyncedDefaultStrategy`) so every rank takes the same densify/prune
  decisions, and the parameters are re-broadcast from rank 0 after each refinement; Adam is
  scaled for the ``world_size`` times larger batch as gsplat's ``simple_trainer`` does
  (:meth:`DistContext.adam_scaling`, :meth:`DistContext.scaled_steps`);
- codebook, query index, evaluation and every write into the scene folder: rank 0 alone.

A rank that dies closes its connections, so the others fail in their next collective with a
:class:`DistributedError` naming the rank and the stage; ``distributed.timeout_s`` bounds a
silent hang; torchrun then stops the remaining workers and exits non-zero. Workers also ask
the kernel for SIGTERM when their launcher dies (``PR_SET_PDEATHSIG``), so cancelling the
launcher ends every rank.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import hashlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Environment variables torchrun sets for every worker.
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A collective failed: another rank died, was killed, or hung past ``distributed.timeout_s``."""


def under_launcher() -> bool:
    """This process was started by torchrun (or another launcher setting the same variables)."""
    return all(k in os.environ for k in LAUNCH_ENV)


def backend_for(device: str) -> str:
    """The process-group backend for a device: NCCL on CUDA, gloo otherwise."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def rank_device(device: str, local_rank: int, world_size: int) -> str:
    """The device of one rank: with several ranks on CUDA, one GPU each (``cuda:LOCAL_RANK``)."""
    device = str(device)
    if world_size > 1 and device.startswith("cuda"):
        if ":" in device:
            log.warning("device %s: with %d ranks each rank uses cuda:LOCAL_RANK", device, world_size)
        return f"cuda:{local_rank}"
    return device


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to(torch.float32) for t in tensors]) if tensors else torch.zeros(0)


def param_digest(tensors: Sequence[torch.Tensor]) -> str:
    """sha256 (16 hex digits) of the tensors' bytes and shapes: equal digests = bit-identical."""
    h = hashlib.sha256()
    for t in tensors:
        arr = t.detach().cpu().contiguous().numpy()
        h.update(str((arr.dtype.str, arr.shape)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


class DistContext:
    """This process's place in the job; with ``world_size == 1`` every method is a no-op."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, backend: str = "",
                 device: str = "cpu") -> None:  # fmt: skip
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.backend = backend
        self.device = device
        #: Payload bytes this rank put into gradient all-reduces (per stage: reset_bytes()).
        self.bytes_reduced = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def record(self) -> dict[str, Any]:
        """What a stage record says about how it ran."""
        return {"world_size": self.world_size, "backend": self.backend or "none"}

    # -------------------------------------------------------------------- collectives
    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except DistributedError:
            raise
        except Exception as exc:  # noqa: BLE001 - DistBackendError, DistNetworkError, RuntimeError
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: lost contact with the other ranks during {what} "
                f"(a rank died, was killed, or hung past distributed.timeout_s): {str(exc).strip()[:300]}"
            ) from exc

    def barrier(self, what: str = "a barrier") -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        with self._guard(what):
            if self.backend == "nccl":
                dist.barrier(device_ids=[torch.device(self.device).index or 0])
            else:
                dist.barrier()

    def agree(self, value: Any, what: str = "a decision") -> Any:
        """Rank 0's ``value`` on every rank (decisions every rank must take alike)."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        with self._guard(what):
            dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def gather_objects(self, value: Any, what: str = "a gather") -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        with self._guard(what):
            dist.all_gather_object(out, value)
        return out

    def _comm_device(self) -> torch.device:
        return torch.device(self.device) if self.backend == "nccl" else torch.device("cpu")

    def average_gradients(self, params: Sequence[torch.Tensor], what: str = "the gradient all-reduce") -> int:
        """Replace every parameter's gradient by its mean over the ranks; returns the bytes sent.

        One all-reduce of a flat float32 buffer holding every gradient plus one "has a gradient"
        flag per parameter: a parameter no rank computed a gradient for keeps ``grad = None``
        (Adam then skips it, as in one process); one that only some ranks reached gets the mean
        with zeros from the others (the loss is the mean over all ranks' views).
        """
        if not self.enabled:
            return 0
        import torch.distributed as dist

        dev = self._comm_device()
        pieces = [
            (p.grad.detach().reshape(-1).to(dev, torch.float32) if p.grad is not None
             else torch.zeros(p.numel(), device=dev))
            for p in params
        ]  # fmt: skip
        flags = torch.tensor([float(p.grad is not None) for p in params], device=dev)
        buf = torch.cat([*pieces, flags])
        with self._guard(what):
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        offset = 0
        have = buf[-len(params):] if len(params) else buf[:0]
        for i, p in enumerate(params):
            n = p.numel()
            if have[i] > 0:
                p.grad = (buf[offset : offset + n] / self.world_size).view_as(p).to(p.device, p.dtype)
            else:
                p.grad = None
            offset += n
        sent = buf.numel() * buf.element_size()
        self.bytes_reduced += sent
        return sent

    def all_reduce_(self, tensor: torch.Tensor, op: str = "sum", what: str = "an all-reduce") -> None:
        """In-place sum (or max) over the ranks."""
        if not self.enabled:
            return
        import torch.distributed as dist

        red = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
        dev = self._comm_device()
        buf = tensor.detach().to(dev)
        with self._guard(what):
            dist.all_reduce(buf, op=red)
        self.bytes_reduced += buf.numel() * buf.element_size()
        with torch.no_grad():
            tensor.copy_(buf.to(tensor.device))

    def broadcast_(self, tensors: Sequence[torch.Tensor], what: str = "a broadcast") -> None:
        """Overwrite the tensors (in place) with rank 0's values."""
        if not self.enabled:
            return
        import torch.distributed as dist

        dev = self._comm_device()
        with self._guard(what), torch.no_grad():
            for t in tensors:
                buf = t.detach().to(dev).contiguous()
                dist.broadcast(buf, src=0)
                t.copy_(buf.to(t.device))

    @contextlib.contextmanager
    def main_first(self, what: str = "rank 0's part") -> Iterator[None]:
        """Rank 0 runs the body first (it writes a cache), the others after it (they read it)."""
        if not self.is_main:
            self.barrier(what)
        yield
        if self.is_main:
            self.barrier(what)

    def check_identical(self, tensors: Sequence[torch.Tensor], what: str) -> list[str]:
        """Every rank's :func:`param_digest` of ``tensors``; raises when the ranks differ."""
        digests = self.gather_objects(param_digest(tensors), what=f"the {what} check")
        if len(set(digests)) > 1:
            raise DistributedError(f"the ranks' {what} differ after training: {digests}")
        return [str(d) for d in digests]

    # -------------------------------------------------------------------- data parallel
    def scaled_steps(self, steps: int, scale: bool) -> int:
        """Steps of a data-parallel stage: ``ceil(steps / world_size)`` when ``scale``."""
        if scale and self.world_size > 1:
            return max(1, math.ceil(steps / self.world_size))
        return steps

    def adam_scaling(self, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                     eps: float = 1e-8) -> tuple[float, tuple[float, float], float]:  # fmt: skip
        """Adam for a ``world_size`` times larger batch, gsplat simple_trainer's rule.

        ``lr * sqrt(k)``, ``eps / sqrt(k)``, betas ``b ** k`` for ``k = world_size`` (square-root
        scaling, Malladi et al. 2022). gsplat writes the betas as ``1 - k (1 - b)``, the first-order
        expansion of ``b ** k``: equal to 1e-2 at k = 2 (0.8 vs 0.81), and ``b ** k`` stays in
        (0, 1) where gsplat's turns negative (k >= 10, its own TODO).
        """
        k = self.world_size
        if k <= 1:
            return lr, betas, eps
        return lr * math.sqrt(k), (betas[0] ** k, betas[1] ** k), eps / math.sqrt(k)


_CTX = DistContext()


def context() -> DistContext:
    """The process's context (world size 1 unless :func:`init_from_env` joined a group)."""
    return _CTX


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent (torchrun's agent) dies."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(1, int(sig), 0, 0, 0)) == 0  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return False


def init_from_env(device: str, timeout_s: float) -> DistContext:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU); a world of one joins none."""
    global _CTX
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = rank_device(device, local, world)
    if world <= 1:
        _CTX = DistContext(device=dev)
        return _CTX
    import torch.distributed as dist

    set_parent_death_signal()
    backend = backend_for(dev)
    if backend == "nccl":
        torch.cuda.set_device(torch.device(dev))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
    except Exception as exc:  # noqa: BLE001 - rendezvous errors of every kind
        raise DistributedError(f"rank {rank} of {world}: cannot join the process group ({backend}): {exc}") from exc
    _CTX = DistContext(rank, world, local, backend, dev)
    return _CTX


def shutdown() -> None:
    """Leave the process group (if any); the context returns to one process."""
    global _CTX
    if _CTX.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _CTX = DistContext()
    # A process group left in a reference cycle is otherwise freed by the garbage collector during
    # interpreter finalization, when its gloo worker threads can no longer be stopped cleanly: the
    # process then aborts ("terminate called without an active exception", exit -6) after its work
    # is done. Collect now, while everything is alive.
    gc.collect()


def setup_rank_logging(ctx: DistContext, log_dir: Path) -> Path | None:
    """Ranks > 0 log (and print) into ``log_dir/rank_<r>.log``; rank 0 keeps the terminal."""
    logging.getLogger(__name__).info(
        "rank %d of %d (pid %d, backend %s, device %s)", ctx.rank, ctx.world_size, os.getpid(), ctx.backend,
        ctx.device,
    )  # fmt: skip
    if ctx.is_main:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"rank_{ctx.rank}.log"
    stream = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    sys.stdout.flush()
    os.dup2(stream.fileno(), 1)  # stray prints of this rank go to its file, not the launcher's stdout
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank{ctx.rank} %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    log.info("rank %d of %d (pid %d, backend %s, device %s)", ctx.rank, ctx.world_size, os.getpid(), ctx.backend,
             ctx.device)  # fmt: skip
    return path


# ------------------------------------------------------------------------ launching torchrun
def wants_launch(nproc: int, nnodes: int) -> bool:
    return nproc > 1 or nnodes > 1


def config_overrides(section: Any) -> list[str]:
    """``distributed.X=value`` for each setting of ``section`` (a ``DistributedConfig``) that is not
    the default: how the node hands its own distributed settings to the trainer it starts."""
    import dataclasses

    default = type(section)()
    out = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if value != getattr(default, f.name):
            out.append(f"distributed.{f.name}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def strip_option(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == name:
            skip = True
        elif not item.startswith(name + "="):
            out.append(item)
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launcher_argv(nproc: int, nnodes: int, rdzv_endpoint: str, rdzv_id: str, module_argv: Sequence[str],
                  master_port: int | None = None) -> list[str]:  # fmt: skip
    """``python -m torch.distributed.run ... -m ccl_lgs_ros <module_argv>``.

    One machine (no ``rdzv_endpoint``): torchrun through :mod:`ccl_lgs_ros.torchrun_loopback`,
    whose static rendezvous store listens on 127.0.0.1 only (torchrun's own listens on every
    interface), at a free port. Several machines: torchrun's c10d rendezvous at ``rdzv_endpoint``
    (the same command on every machine).
    """
    common = [f"--nproc-per-node={nproc}", "--max-restarts=0"]
    if rdzv_endpoint:
        argv = [sys.executable, "-m", "torch.distributed.run", *common, f"--nnodes={nnodes}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}"]  # fmt: skip
    elif nnodes > 1:
        raise ValueError("distributed.nnodes > 1 needs distributed.rdzv_endpoint (HOST:PORT of the rendezvous)")
    else:
        from .torchrun_loopback import BACKEND

        argv = [sys.executable, "-m", "ccl_lgs_ros.torchrun_loopback", *common, "--nnodes=1",
                f"--rdzv-backend={BACKEND}", f"--rdzv-endpoint=127.0.0.1:{master_port or free_port()}",
                f"--rdzv-id={rdzv_id}", "--local-addr=127.0.0.1"]  # fmt: skip
    return [*argv, "-m", "ccl_lgs_ros", *module_argv]


def launch(argv: Sequence[str], local: bool) -> int:
    """Run torchrun (``argv`` from :func:`launcher_argv`) and return its exit status.

    SIGTERM / SIGINT reach torchrun, which stops its workers; a local run keeps gloo / NCCL's
    sockets on the loopback interface unless the caller chose interfaces. torchrun's stderr is
    passed through; when the job fails, the last line says why in one line (a rank's own error,
    else torchrun's exit code / signal of the failed rank), for the node's failure message.
    """
    import threading

    env = dict(os.environ)
    if local:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    log.info("starting torchrun: %s", " ".join(argv[1:]))
    proc = subprocess.Popen(list(argv), env=env, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
    errors: list[str] = []  # the ranks' own one-line errors
    summary: list[str] = []  # torchrun's failure blocks: rank, exit code, signal
    root: list[str] = []  # the same lines from its "Root Cause" block only

    def pump() -> None:
        assert proc.stderr is not None
        for line in iter(proc.stderr.readline, ""):
            sys.stderr.write(line)
            text = line.strip()
            if "ccl-lgs train: error:" in text:
                errors.append(text.split("error:", 1)[-1].strip())
            elif text.startswith("Root Cause"):
                root.append("")  # from here on: the first rank that failed (the others were stopped after it)
            elif text.startswith(("rank ", "exitcode ")) or text.startswith("traceback") and "Signal " in text:
                (root if root else summary).append(" ".join(text.split()))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def forward(sig: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    reader.join(timeout=5)
    if rc != 0:
        why = "; ".join(([r for r in root if r] or summary)[:3] + errors[:1]) or "see the ranks' output above"
        sys.stderr.write(f"ccl-lgs train: error: the distributed run failed (torchrun exit code {rc}): {why}\n")
    return rc if rc >= 0 else 128 - rc


__all__ = [
    "DistContext",
    "DistributedError",
    "backend_for",
    "context",
    "init_from_env",
    "launch",
    "launcher_argv",
    "param_digest",
    "rank_device",
    "setup_rank_logging",
    "shutdown",
    "under_launcher",
    "wants_launch",
]


# ------------------------------------------------------------------------ densification in sync
def synced_default_strategy(ctx: DistContext, **kwargs: Any) -> Any:
    """gsplat's ``DefaultStrategy`` whose refinements every rank takes alike.

    Each rank accumulates the screen-space gradient statistics (``grad2d``, ``count``, ``radii``)
    of its own views; just before a refinement they are summed (radii: max) over the ranks, which
    is what one process would have accumulated from all those views, so the duplicate / split /
    prune masks are the same everywhere. The split samples new positions from torch's global
    generator, so the parameters are then broadcast from rank 0 (optimizer moments of new
    Gaussians start at zero on every rank).
    """
    from gsplat.strategy import DefaultStrategy

    class SyncedDefaultStrategy(DefaultStrategy):  # type: ignore[misc]
        def step_post_backward(self, params: Any, optimizers: Any, state: Any, step: int, info: Any,
                               packed: bool = False) -> None:  # fmt: skip
            self._sync_now = (
                self.refine_start_iter < step < self.refine_stop_iter
                and step % self.refine_every == 0
                and step % self.reset_every >= self.pause_refine_after_reset
            )
            super().step_post_backward(params, optimizers, state, step, info, packed=packed)
            if self._sync_now:
                ctx.broadcast_(list(params.values()), what="the parameter broadcast after densification")
            self._sync_now = False

        def _update_state(self, params: Any, state: Any, info: Any, packed: bool = False) -> None:
            super()._update_state(params, state, info, packed=packed)
            if getattr(self, "_sync_now", False):
                fold_strategy_state(ctx, state, keep_on_all=True)

    return SyncedDefaultStrategy(**kwargs)


def fold_strategy_state(ctx: DistContext, state: dict[str, Any], keep_on_all: bool = False) -> None:
    """Sum the ranks' densification statistics (radii: max).

    ``keep_on_all``: every rank holds the total (before a refinement). Otherwise rank 0 holds it
    and the others restart from zero (before a checkpoint, which rank 0 writes), so the sum over
    the ranks stays what one process would have accumulated, across a resume too.
    """
    if not ctx.enabled:
        return
    for name in ("grad2d", "count", "radii"):
        t = state.get(name)
        if t is None:
            continue
        ctx.all_reduce_(t, op="max" if name == "radii" else "sum", what="the densification statistics")
        if not keep_on_all and not ctx.is_main and name != "radii":
            t.zero_()


# ------------------------------------------------------------------------ partitioned Gaussians
def shard_indices(n: int, ctx: DistContext) -> Any:
    """The rows of ``n`` Gaussians this rank owns when they are partitioned (every world_size-th)."""
    import numpy as np

    return np.arange(ctx.rank, n, ctx.world_size)


def gather_gaussians(ctx: DistContext, arrays: dict[str, Any]) -> dict[str, Any] | None:
    """Rank 0: every rank's Gaussians concatenated in rank order (others: ``None``).

    ``arrays`` is one rank's :meth:`GaussianModel.state_arrays`; per-Gaussian arrays (first axis =
    this rank's count) are concatenated, the rest (format version, SH degree) taken from rank 0.
    """
    if not ctx.enabled:
        return arrays
    import numpy as np
    import torch.distributed as dist

    n = len(arrays["means"])
    mine = {k: (np.asarray(v), np.ndim(v) > 0 and len(v) == n) for k, v in arrays.items()}
    box: list[Any] = [None] * ctx.world_size if ctx.is_main else []
    with ctx._guard("gathering the partitioned Gaussians"):
        dist.gather_object(mine, box if ctx.is_main else None, dst=0)
    if not ctx.is_main:
        return None
    out = {}
    for key, (value, per_gaussian) in box[0].items():
        out[key] = np.concatenate([part[key][0] for part in box]) if per_gaussian else value
    return out
