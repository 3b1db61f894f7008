"""Benchmark of the real priors stage: frames/s of mask generation + CLIP, and of SAM 2 association.

Random weights (nothing is downloaded): the timing of the real architectures does not depend on
the weights, except through how many masks survive. Random SAM outputs are few after NMS, so
the CLIP stage is also timed on ``--clip-masks`` masks per frame (a real SAM ViT-H with the
default thresholds keeps roughly 50-150 per level), and association is timed on synthetic mask
maps with ``--objects`` objects per frame. The "stage 1-2" estimate is SAM time + CLIP time for
``--clip-masks`` masks.

    PYTHONPATH=src python bench/bench_priors.py                       # reduced models, CPU
    PYTHONPATH=src python bench/bench_priors.py --sam vit_h --full --device cuda --frames 20

Prints and writes one JSON document (``--out``) with the machine description.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ccl_lgs_ros.capture.format import Capture, Frame, Intrinsics, write_image
from ccl_lgs_ros.config import Config
from ccl_lgs_ros.io import atomic_write_json
from ccl_lgs_ros.priors.association import VideoFrames, associate_masks
from ccl_lgs_ros.priors.models import build_random_backend
from ccl_lgs_ros.priors.sam_masks import generate_level_masks


def machine(device: str) -> dict:
    import open_clip
    import sam2
    import segment_anything  # noqa: F401 - version probe below

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "sam2": getattr(sam2, "__version__", "unknown"),
        "device": device,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def synthetic_capture(root: Path, frames: int, width: int, height: int, seed: int = 0) -> Capture:
    """Moving coloured boxes on a textured background, camera sliding sideways."""
    rng = np.random.default_rng(seed)
    n_obj = 12
    boxes = rng.uniform(0.05, 0.75, size=(n_obj, 2)) * [width, height]
    sizes = rng.uniform(0.08, 0.25, size=(n_obj, 2)) * [width, height]
    colours = rng.integers(30, 255, size=(n_obj, 3))
    intr = Intrinsics(0.8 * width, 0.8 * width, width / 2, height / 2, width, height)
    out = []
    for i in range(frames):
        img = (rng.integers(0, 40, size=(height, width, 3)) + 60).astype(np.uint8)
        shift = i * width * 0.01
        for (x, y), (w, h), c in zip(boxes, sizes, colours):
            x0 = int(max(0, x - shift))
            img[int(y) : int(y + h), x0 : int(x0 + w)] = c
        name = f"images/{i:05d}.jpg"
        write_image(root / name, img)
        c2w = np.eye(4)
        c2w[0, 3] = 0.02 * i
        out.append(Frame(name, c2w, intr, timestamp=float(i)))
    cap = Capture(root, out)
    cap.save()
    return cap


def synthetic_id_maps(frames: int, width: int, height: int, objects: int) -> list[np.ndarray]:
    """Per-frame maps with ``objects`` rectangular masks drifting sideways."""
    side = int(np.ceil(np.sqrt(objects)))
    maps = []
    for i in range(frames):
        m = np.full((height, width), -1, np.int32)
        shift = int(i * width * 0.01)
        for k in range(objects):
            gy, gx = divmod(k, side)
            y0, x0 = gy * height // side, gx * width // side + shift
            m[y0 + 2 : y0 + height // side - 2, max(0, x0 + 2) : max(0, x0 + width // side - 2)] = k
        maps.append(m)
    return maps


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sam", default="vit_h", choices=["vit_h", "vit_l", "vit_b"], help="SAM with --full")
    ap.add_argument("--full", action="store_true", help="real architecture sizes (else reduced test models)")
    ap.add_argument("--sam2-config", default=None, help="SAM 2 config with --full (default: the config's)")
    ap.add_argument("--clip-model", default=None, help="OpenCLIP architecture with --full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--width", type=int, default=None, help="default 1024 with --full, else 128")
    ap.add_argument("--height", type=int, default=None, help="default 768 with --full, else 96")
    ap.add_argument("--points-per-side", type=int, default=None, help="default 32 with --full, else 8")
    ap.add_argument("--points-per-batch", type=int, default=None, help="default 256 on CUDA, else 64")
    ap.add_argument("--clip-masks", type=int, default=100, help="masks per frame for the CLIP timing")
    ap.add_argument("--objects", type=int, default=50, help="objects per frame for the association timing")
    ap.add_argument("--reseed", action="store_true", help="time association with re-seeding")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args()

    full = args.full
    width = args.width or (1024 if full else 128)
    height = args.height or (768 if full else 96)
    cfg = Config()
    p = cfg.priors
    p.pred_iou_thresh = p.stability_score_thresh = 0.0  # random weights: keep what SAM returns
    p.points_per_side = args.points_per_side or (32 if full else 8)
    p.points_per_batch = args.points_per_batch or (256 if args.device.startswith("cuda") else 64)
    p.precision = args.precision
    p.reseed = args.reseed
    p.association_max_objects = max(args.objects, 1)
    if args.sam2_config:
        p.sam2_config = args.sam2_config
    if args.clip_model:
        p.clip_model = args.clip_model
    result: dict = {
        "machine": machine(args.device),
        "settings": {
            "sam": args.sam if full else "reduced (256 px, 4x192 ViT)",
            "sam2": p.sam2_config if full else "sam2.1_hiera_t @ 256 px",
            "clip": p.clip_model if full else "ViT-S-32",
            "frames": args.frames,
            "width": width,
            "height": height,
            "points_per_side": p.points_per_side,
            "points_per_batch": p.points_per_batch,
            "precision": args.precision,
            "random_weights": True,
        },
    }
    t0 = time.perf_counter()
    backend = build_random_backend(cfg, args.device, full=full, sam_model_type=args.sam)
    result["build_s"] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        cap = synthetic_capture(Path(tmp), args.frames, width, height)
        # Warm-up (CUDA kernels, autotuning) on frame 0, not timed.
        backend.frame_priors(cap, 0, ["sp", "wp"])
        sync(args.device)

        sam_s = clip_s = 0.0
        masks_per_level = []
        for i in range(args.frames):
            image = backend.load_image(cap, i)
            t = time.perf_counter()
            cands, levels = generate_level_masks(
                backend.predictor, image, ("sp", "wp"), backend.settings, autocast=backend.precision
            )
            sync(args.device)
            sam_s += time.perf_counter() - t
            masks_per_level.append([len(lm.candidate_index) for lm in levels.values()])
            # CLIP on a realistic number of masks: random rectangles at the frame size.
            rng = np.random.default_rng(i)
            m = torch.zeros(args.clip_masks, height, width, dtype=torch.bool, device=backend.device)
            for k in range(args.clip_masks):
                y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
                m[k, y0 : y0 + rng.integers(8, height // 2), x0 : x0 + rng.integers(8, width // 2)] = True
            t = time.perf_counter()
            backend.clip.encode_masks(image, m, batch_size=p.clip_batch_size)
            sync(args.device)
            clip_s += time.perf_counter() - t
        t = time.perf_counter()
        for i in range(args.frames):
            backend.frame_priors(cap, i, ["sp", "wp"])
        sync(args.device)
        frame_priors_s = time.perf_counter() - t
        result["masks"] = {
            "sam_s_per_frame": sam_s / args.frames,
            "clip_s_per_frame": clip_s / args.frames,
            "clip_masks_per_frame": args.clip_masks,
            "stage12_fps_estimate": args.frames / (sam_s + clip_s),
            "frame_priors_fps_random_masks": args.frames / frame_priors_s,
            "mean_masks_per_level_random_weights": np.mean(masks_per_level, axis=0).tolist(),
        }

        id_maps = synthetic_id_maps(args.frames, width, height, args.objects)
        order = list(range(args.frames))
        size = backend.sam2_video.image_size
        frames = VideoFrames(lambda pos: backend.load_image(cap, order[pos]), args.frames, size)
        warm = VideoFrames(lambda pos: backend.load_image(cap, pos), 2, size)
        associate_masks(backend.sam2_video, warm, id_maps[:2], reseed=False, autocast=backend.precision)
        sync(args.device)
        t = time.perf_counter()
        _, stats = associate_masks(
            backend.sam2_video,
            frames,
            id_maps,
            iou_thresh=p.association_iou,
            reseed=args.reseed,
            max_objects_per_pass=p.association_max_objects,
            autocast=backend.precision,
        )
        sync(args.device)
        assoc_s = time.perf_counter() - t
        result["association"] = {
            "objects_per_frame": args.objects,
            "seconds": assoc_s,
            "fps": args.frames / assoc_s,
            "tracked_frame_steps_per_s": stats.frames_tracked / assoc_s,
            "stats": stats.to_json(),
        }
    if args.device.startswith("cuda"):
        result["machine"]["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
