"""Benchmark of the priors stage's cost on CPU: per-stage time and SAM 2 propagated frames vs frame count.

Part 1, cost (the real segment_anything / sam2 / open_clip code, reduced random-weight models
written as checkpoint files and loaded the way a user's are): ``--frames`` prefixes of a real
capture (default the shared ``nerfstudio_fakeplant``, imported at ``--downscale``) go through
SAM two-level masks, CLIP mask features and SAM 2 association with the settings of the CI test
of the user's path (``test/core/test_cli_real_models.py``). Random weights are the worst case of the
association: nothing tracks, so every frame re-seeds. Reported per frame count: seconds per
frame of each stage, propagated frames per input frame, passes, whether the cap was reached.
The association before issue 22 (``bench/_association_v1.py``) runs on the same masks for the
counts in ``--v1-frames``.

Part 2, label quality (model-free, so both algorithms see identical inputs): a synthetic scene's
simulator masks (``priors.sim_corruption``) are associated with a ground-truth tracker that
loses each object in a frame with probability ``--miss`` (the tracker's misses). Per level:
labelled fraction, consistency (share of a ground-truth object's labelled masks carrying its
most common label), purity (share of a label's masks on its most common object) and labels per
object.

    PYTHONPATH=src python bench/bench_association.py --out bench/results/association
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import _association_v1  # noqa: E402,I001 - bench/ is on sys.path when run as a script
import numpy as np
import torch

from ccl_lgs_ros.capture.format import Capture
from ccl_lgs_ros.config import Config, apply_overrides, parse_assignments
from ccl_lgs_ros.io import atomic_write_json
from ccl_lgs_ros.priors.association import VideoFrames, associate_masks, frame_order
from ccl_lgs_ros.priors.models import REDUCED_SETTINGS, build_real_backend, write_random_checkpoints

LEVELS = ("sp", "wp")
# As test/conftest.py: $CCL_LGS_DATASETS, else ../shared/datasets beside the repository.
DATASET = Path(os.environ.get("CCL_LGS_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
DATASET = DATASET / "nerfstudio_fakeplant"


def machine() -> dict:
    load = os.getloadavg()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loadavg_1_5_15": [round(x, 2) for x in load],
        "note": "times depend on the load recorded in loadavg_1_5_15 (other work on the machine inflates them)",
    }


def small_settings(extra: list[str]) -> Config:
    """The CI test's settings: reduced models, tiny preset, small SAM grid (see the test's docstring)."""
    cfg = Config()
    sets = {**REDUCED_SETTINGS, "priors.points_per_side": 8, "priors.image_size": 160}
    apply_overrides(cfg, parse_assignments([f"{k}={v}" for k, v in sets.items()] + extra))
    return cfg


# --------------------------------------------------------------------------- part 1: cost
def run_cost(args: argparse.Namespace, work: Path) -> list[dict]:
    from ccl_lgs_ros.capture.importers import import_capture

    ckpt = write_random_checkpoints(work / "checkpoints")
    cfg = small_settings([f"{k}={v}" for k, v in ckpt.items()] + args.set)
    backend = build_real_backend(cfg, "cpu")
    rows = []
    for n in args.frames:
        cap_dir = work / f"capture_{n}"
        import_capture(args.dataset, cap_dir, max_frames=n, downscale=args.downscale)
        cap = Capture.load(cap_dir)
        clip_timer = [0.0]
        encode = backend.clip.encode_masks

        def timed(*a, _encode=encode, _timer=clip_timer, **k):  # noqa: ANN002,ANN003,ANN202 - wraps encode_masks
            t = time.perf_counter()
            out = _encode(*a, **k)
            _timer[0] += time.perf_counter() - t
            return out

        backend.clip.encode_masks = timed  # type: ignore[method-assign]
        t = time.perf_counter()
        priors = [backend.frame_priors(cap, i, LEVELS) for i in range(n)]
        frames_s = time.perf_counter() - t
        backend.clip.encode_masks = encode  # type: ignore[method-assign]
        clip_s = clip_timer[0]
        t = time.perf_counter()
        backend.associate(cap, priors, LEVELS)
        assoc_s = time.perf_counter() - t
        row = {
            "frames": n,
            "image_size": [cap.frames[0].intrinsics.width, cap.frames[0].intrinsics.height],
            "sam_s_per_frame": (frames_s - clip_s) / n,
            "clip_s_per_frame": clip_s / n,
            "association_s": assoc_s,
            "association_s_per_frame": assoc_s / n,
            "masks_per_frame": {lv: float(np.mean([len(fp.levels[lv].labels) for fp in priors])) for lv in LEVELS},
            "association": {lv: st.to_json() for lv, st in backend.association_stats.items()},
            "propagated_per_frame": {lv: st.propagated_per_frame for lv, st in backend.association_stats.items()},
        }
        if n in args.v1_frames:
            order = frame_order(cap.c2w_all(), [f.timestamp for f in cap.frames])
            video = VideoFrames(
                lambda pos, _cap=cap, _order=order: backend.load_image(_cap, _order[pos]), n,
                backend.sam2_video.image_size,
            )
            v1 = {}
            t = time.perf_counter()
            for lv in LEVELS:
                _, st = _association_v1.associate_masks(
                    backend.sam2_video, video, [priors[i].levels[lv].masks for i in order],
                    iou_thresh=cfg.priors.association_iou, reseed=True,
                    max_objects_per_pass=cfg.priors.association_max_objects,
                )
                st.frames = n
                v1[lv] = st.to_json()
            row["v1"] = {"association_s": time.perf_counter() - t, "association": v1,
                         "propagated_per_frame": {lv: v1[lv]["propagated_per_frame"] for lv in LEVELS}}
        print(json.dumps({k: v for k, v in row.items() if k != "association"}), flush=True)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- part 2: quality
class GroundTruthTracker:
    """Propagates each seeded object to its ground-truth instance mask; misses it with probability ``miss``."""

    image_size = 64

    def __init__(self, instances: list[np.ndarray], miss: float, seed: int) -> None:
        self.gt = instances
        self.miss = miss
        self.rng = np.random.default_rng(seed)

    def init_state(self, video_path):  # noqa: ANN001,ANN201 - sam2's signature
        return {"device": torch.device("cpu"), "objs": {}}

    def reset_state(self, state):  # noqa: ANN001,ANN201
        state["objs"].clear()

    def add_new_mask(self, state, frame_idx, obj_id, mask):  # noqa: ANN001,ANN201
        ids = self.gt[frame_idx][mask.numpy()]
        state["objs"][obj_id] = int(np.bincount(ids[ids >= 0]).argmax()) if (ids >= 0).any() else -2

    def propagate_in_video(self, state, start_frame_idx=0):  # noqa: ANN001,ANN201
        ids = list(state["objs"])
        for t in range(start_frame_idx, len(self.gt)):
            masks = np.stack([self.gt[t] == state["objs"][o] for o in ids])
            if t != start_frame_idx:
                masks[self.rng.random(len(ids)) < self.miss] = False
            yield t, ids, torch.as_tensor(masks[:, None] * 10.0 - 5.0)


def label_quality(labels: list[np.ndarray], id_maps: list[np.ndarray], gt: list[np.ndarray]) -> dict:
    by_obj: dict[int, Counter] = {}
    by_label: dict[int, Counter] = {}
    total = labelled = 0
    for lab, ids, inst in zip(labels, id_maps, gt):
        for k, lb in enumerate(lab):
            pix = inst[ids == k]
            pix = pix[pix >= 0]
            if not pix.size:
                continue
            obj = int(np.bincount(pix).argmax())
            total += 1
            if lb < 0:
                continue
            labelled += 1
            by_obj.setdefault(obj, Counter())[int(lb)] += 1
            by_label.setdefault(int(lb), Counter())[obj] += 1
    cons = sum(c.most_common(1)[0][1] for c in by_obj.values()) / max(labelled, 1)
    pur = sum(c.most_common(1)[0][1] for c in by_label.values()) / max(labelled, 1)
    return {
        "labelled_fraction": labelled / max(total, 1),
        "consistency": cons,
        "purity": pur,
        "labels_per_object": float(np.mean([len(c) for c in by_obj.values()])) if by_obj else 0.0,
    }


def run_quality(args: argparse.Namespace, work: Path) -> list[dict]:
    from ccl_lgs_ros.priors.simulator import SimulatorBackend
    from ccl_lgs_ros.testing.synth.generate import generate_scene

    rows = []
    for seed in args.quality_seeds:
        for n in args.quality_frames:
            cap = generate_scene(work / f"synth_{seed}_{n}", seed=seed, num_frames=n)
            cfg = Config()
            sim = SimulatorBackend(cfg.priors)
            priors = [sim.frame_priors(cap, i, LEVELS) for i in range(n)]
            gt = [np.asarray(cap.load_instances(i)) for i in range(n)]
            for miss in args.miss:
                for lv in LEVELS:
                    id_maps = [fp.levels[lv].masks for fp in priors]
                    frames = VideoFrames(lambda i: np.zeros((8, 8, 3), np.uint8), n, 64)
                    out = {"seed": seed, "frames": n, "miss": miss, "level": lv}
                    for name, fn in (("v1", _association_v1.associate_masks), ("current", associate_masks)):
                        labels, st = fn(GroundTruthTracker(gt, miss, seed), frames, id_maps)
                        st.frames = n
                        out[name] = {
                            **label_quality(labels, id_maps, gt),
                            "propagated_per_frame": st.propagated_per_frame,
                            "capped": st.capped,
                            "untracked_objects": st.untracked_objects,
                        }
                    rows.append(out)
                    print(json.dumps(out), flush=True)
    return rows


def plot(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = result["cost"]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    n = [r["frames"] for r in rows]
    for lv in LEVELS:
        ax[0].plot(n, [r["propagated_per_frame"][lv] for r in rows], "o-", label=f"windows + cap, level {lv}")
    v1 = [r for r in rows if "v1" in r]
    for lv in LEVELS:
        ax[0].plot([r["frames"] for r in v1], [r["v1"]["propagated_per_frame"][lv] for r in v1], "s--",
                   label=f"before issue 22, level {lv}")
    ax[0].axhline(3.0, color="grey", lw=0.8, ls=":")
    ax[0].set(xlabel="frames", ylabel="SAM 2 propagated frames per frame", title="association cost (nothing tracks)")
    ax[0].legend(fontsize=7)
    for key, label in (("sam_s_per_frame", "SAM masks"), ("clip_s_per_frame", "CLIP features"),
                       ("association_s_per_frame", "SAM 2 association")):
        ax[1].plot(n, [r[key] for r in rows], "o-", label=label)
    ax[1].set(xlabel="frames", ylabel="seconds per frame (CPU, loaded)", title="per-stage time, reduced models")
    ax[1].legend(fontsize=7)
    quality = result.get("quality", [])
    names = [f"{q['frames']}f s{q['seed']} m{q['miss']:g} {q['level']}" for q in quality]
    x = np.arange(len(quality))
    for off, key, label in ((-0.2, "v1", "before issue 22"), (0.2, "current", "overlapping windows + cap")):
        ax[2].bar(x + off, [q[key]["consistency"] for q in quality], 0.4, label=label)
    ax[2].set_xticks(x, names, rotation=90, fontsize=6)
    ax[2].set(ylabel="consistency", ylim=(0.4, 1.05),
              title="labels on simulator masks (frames, seed, miss, level)")
    ax[2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=DATASET)
    ap.add_argument("--downscale", type=int, default=2)
    ap.add_argument("--frames", type=int, nargs="+", default=[12, 24, 48])
    ap.add_argument("--v1-frames", type=int, nargs="*", default=[12, 24])
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quality-frames", type=int, nargs="*", default=[24, 48])
    ap.add_argument("--quality-seeds", type=int, nargs="*", default=[101, 102])
    ap.add_argument("--miss", type=float, nargs="*", default=[0.0, 0.2])
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench/results/association"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"machine": machine(), "settings": {"args": {k: str(v) for k, v in vars(args).items()}}}
    with tempfile.TemporaryDirectory() as tmp:
        result["quality"] = run_quality(args, Path(tmp))
        if not args.skip_cost:
            result["cost"] = run_cost(args, Path(tmp))
    result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "association.json", result)
    if "cost" in result:
        plot(result, args.out / "association.png")
    print(f"wrote {args.out}/association.json")


if __name__ == "__main__":
    main()
