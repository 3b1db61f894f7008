"""On-disk cache of the priors: one ``.npz`` per frame plus ``labels.npz`` and ``meta.json``.

```
priors/
  meta.json            format_version, backend, levels, digests, text-encoder spec, stats, complete
  frame_000000.npz     per level: <level>_masks (int16/int32 [H,W]), <level>_features (float16 [K,D]),
                       plus frame_digest (the inputs it was computed from) and settings_digest
  labels.npz           association labels <frame>_<level> (int32 [K]) and assoc_digest
```

Frames are written one by one (atomically), so a crash loses at most the frame being computed
and a rerun skips every frame whose stored digests still match. Changing a per-frame setting
(model, thresholds, simulator corruption, levels) invalidates everything; changing only an
association setting reruns association; a changed or added input frame recomputes that frame.
Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..capture.format import Capture
from ..config import digest
from ..io import atomic_save_npz, atomic_write_json, load_npz, read_json
from .types import FramePriors, LevelPriors

CACHE_VERSION = 1
META = "meta.json"
LABELS = "labels.npz"


def json_digest(data: Any) -> str:
    """Short stable hash of JSON-serialisable data."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _file_stat(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def frame_digests(capture: Capture, include_pose: bool = False) -> list[str]:
    """One digest per frame of what its priors are computed from.

    The image file (path, size, modification time) and, when present, the instance map (read by
    the simulator); the pose only when ``include_pose`` (the simulator's feature drift depends on
    the camera heading; the real models ignore poses, so refined poses keep the cache valid).
    """
    out = []
    for f in capture.frames:
        rec: dict[str, Any] = {
            "image": [f.file_path, _file_stat(capture.root / f.file_path)],
            "size": [f.intrinsics.width, f.intrinsics.height],
        }
        if f.instance_file_path:
            rec["instances"] = [f.instance_file_path, _file_stat(capture.root / f.instance_file_path)]
        if include_pose:
            rec["pose"] = np.round(np.asarray(f.c2w, dtype=np.float64), 6).tolist()
        out.append(json_digest(rec))
    return out


def frame_path(out_dir: Path, index: int) -> Path:
    return Path(out_dir) / f"frame_{index:06d}.npz"


def save_frame(out_dir: Path, index: int, priors: FramePriors, frame_digest: str, settings_digest: str) -> None:
    """Write one frame's masks and features (labels live in ``labels.npz``)."""
    arrays: dict[str, np.ndarray] = {
        "frame_digest": np.array(frame_digest),
        "settings_digest": np.array(settings_digest),
        "levels": np.array(sorted(priors.levels)),
    }
    for level, lp in priors.levels.items():
        k = lp.features.shape[0]
        # Most maps have far fewer than 32767 masks: int16 halves the file.
        arrays[f"{level}_masks"] = lp.masks.astype(np.int16 if k < 32767 else np.int32)
        arrays[f"{level}_features"] = np.asarray(lp.features, dtype=np.float16)
    atomic_save_npz(frame_path(out_dir, index), arrays, compressed=True)


def frame_is_valid(out_dir: Path, index: int, frame_digest: str, settings_digest: str) -> bool:
    """The cached frame exists, is readable and was computed from these inputs and settings."""
    path = frame_path(out_dir, index)
    if not path.is_file():
        return False
    try:
        with np.load(str(path), allow_pickle=False) as data:  # reads only the members asked for
            return str(data["frame_digest"]) == frame_digest and str(data["settings_digest"]) == settings_digest
    except (OSError, ValueError, KeyError, EOFError):
        return False  # a damaged file is recomputed


def load_frame(out_dir: Path, index: int, labels: dict[str, np.ndarray] | None = None) -> FramePriors:
    data = load_npz(frame_path(out_dir, index))
    out = FramePriors()
    for level in (str(v) for v in data["levels"]):
        feats = data[f"{level}_features"]
        lab = labels.get(f"{index}_{level}") if labels is not None else None
        if lab is None:
            lab = np.full(feats.shape[0], -1, dtype=np.int32)
        out.levels[level] = LevelPriors(masks=data[f"{level}_masks"].astype(np.int32), features=feats, labels=lab)
    return out


def save_labels(out_dir: Path, priors: Sequence[FramePriors], assoc_digest: str) -> None:
    arrays: dict[str, np.ndarray] = {"assoc_digest": np.array(assoc_digest)}
    for i, fp in enumerate(priors):
        for level, lp in fp.levels.items():
            arrays[f"{i}_{level}"] = np.asarray(lp.labels, dtype=np.int32)
    atomic_save_npz(Path(out_dir) / LABELS, arrays, compressed=True)


def load_labels(out_dir: Path) -> dict[str, np.ndarray] | None:
    path = Path(out_dir) / LABELS
    if not path.is_file():
        return None
    try:
        return load_npz(path)
    except (OSError, ValueError, EOFError):
        return None


def read_meta(out_dir: Path) -> dict[str, Any] | None:
    path = Path(out_dir) / META
    if not path.is_file():
        return None
    try:
        meta = read_json(path)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    atomic_write_json(Path(out_dir) / META, {"format_version": CACHE_VERSION, **meta})


def clear(out_dir: Path, keep_below: int = 0) -> None:
    """Remove cached frames with index >= ``keep_below`` (all by default) and the labels."""
    out_dir = Path(out_dir)
    for path in out_dir.glob("frame_*.npz"):
        try:
            index = int(path.stem.split("_")[1])
        except (IndexError, ValueError):
            continue
        if index >= keep_below:
            path.unlink(missing_ok=True)
    if keep_below == 0:
        (out_dir / LABELS).unlink(missing_ok=True)


def settings_digests(settings: dict[str, Any], assoc_keys: Sequence[str]) -> tuple[str, str]:
    """``(frame_digest, assoc_digest)`` of the settings: the first ignores association-only keys."""
    priors = dict(settings.get("priors", {}))
    frame_part = {**settings, "priors": {k: v for k, v in priors.items() if k not in assoc_keys}}
    return digest({"v": CACHE_VERSION, **frame_part}), digest({"v": CACHE_VERSION, **settings})
