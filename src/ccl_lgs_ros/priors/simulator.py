"""The priors SIMULATOR: a documented stand-in for SAM, SAM 2 and CLIP.

This is not a model. It reads the ground truth of a capture (``instances/`` maps and the
``ccl_lgs.instances`` labels, as written by :mod:`ccl_lgs_ros.testing.synth` or anyone else's synthetic
scenes in that format) and produces what the foundation models would, with controllable
imperfections, so the whole method can be tested and measured without checkpoints. It is
selected only by ``priors.backend: simulator``; nothing falls back to it silently.

What it simulates:

- **CLIP space** (:class:`SimulatedTextEncoder`): every word has a deterministic random direction
  (a hash of the word seeds a Gaussian vector); a phrase is the normalised sum of its words'
  vectors plus a phrase-specific component. "red mug" matches itself, is partly similar to "mug"
  and unrelated to "blue box", "object" or unknown words, which is what relevance scoring needs.
  Like CLIP's, the space has a *modality gap*: every text embedding shares a common "text"
  direction and every image feature a common "image" direction (slightly aligned with each
  other), so image-text cosines sit in CLIP's narrow range (~0.47 for the matching label, ~0.17
  for unrelated text, negatives included) rather than near 1 and 0. Without it LERF's
  ``softmax(10 * [s_pos, s_neg])`` saturates and labels that share a word become
  indistinguishable.
- **SAM masks**, three raw granularities ``s``/``p``/``w`` and the CCL-LGS merged sets
  ``sp``/``wp``: the instance map with view-dependent corruption of strength
  ``priors.sim_corruption``: objects split into parts (more at the sub-part level), merge with a
  touching neighbour (more at the whole level), get noisy boundaries or are missed (more when
  small). With corruption 0 every level equals the instance map.
- **CLIP mask features**: the label embedding of what the mask covers, mixed by pixel share when
  a mask covers several objects, plus view-dependent drift (camera heading) and noise that grows
  with occlusion (``priors.sim_feature_noise``); unit vectors, float16.
- **CLIP misreads** (``priors.sim_confusion``, off by default): in some views an object's feature
  is mostly that of its confuser (another label of the scene of the same shape, else the most
  similar one), more often from one range of viewing directions and when partly hidden, as CLIP
  mistakes a can for a cup from an unlucky side; ``priors.sim_misread_keep`` sets how much of
  the object's own semantics the misread feature keeps (near 1: a near tie). The SAM 2 labels
  are unaffected (the tracker follows the mask, not the feature), which is what CCL's pull/push
  can exploit.
- **SAM 2 association**: a mask takes its object's track label when it overlaps the object by
  IoU > ``priors.association_iou``; the tracker swaps identities (preferably between objects of
  the same label) or loses tracks at a rate growing with the corruption. With corruption 0 the
  labels are a perfect, consistent object id across frames.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ..capture.format import Capture
from ..config import Config, PriorsConfig
from .types import FramePriors, LevelPriors

SIM_VERSION = 2
RAW_LEVELS = ("s", "p", "w")
MERGED_LEVELS = ("sp", "wp")
ALL_LEVELS = RAW_LEVELS + MERGED_LEVELS

#: Per-level corruption profile at full strength: split, merge and miss probabilities per object.
#: Sub-part masks split objects, whole masks merge neighbours; merged sets sit in between.
_PROFILES: dict[str, tuple[float, float, float]] = {
    "s": (0.9, 0.0, 0.25),
    "p": (0.5, 0.15, 0.2),
    "w": (0.1, 0.6, 0.2),
    "sp": (0.7, 0.08, 0.2),
    "wp": (0.3, 0.4, 0.2),
}
_BOUNDARY_FLIP = 0.45  # boundary pixels flipped to a neighbour's region at full strength
_IDENTITY_ERROR = 0.08  # tracker identity errors per visible object and frame at full strength
_STOPWORDS = frozenset({"a", "an", "the", "of", "some", "photo"})


def _hash_seed(*parts: Any) -> int:
    """Stable 64-bit seed from strings/ints (Python's ``hash`` is salted per process)."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def _unit(v: np.ndarray, axis: int = -1) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=axis, keepdims=True), 1e-12)


class SimulatedTextEncoder:
    """Deterministic stand-in for the CLIP text encoder (see the module docstring).

    Args:
        dim: embedding dimension (``priors.sim_dim``).
        seed: changes every direction (``priors.sim_seed``).
        objectness: ``priors.sim_objectness`` in [0, 1): the share of a common "objectness"
            direction in every image feature and in the semantics of generic phrases
            (:attr:`GENERIC_WORDS`: "object", "things", "stuff", ...), so that LERF's canonical
            negatives score close to an object's own label, as they do with CLIP. 0: generic
            words are as unrelated to images as any other word.
    """

    kind = "simulator"
    #: Weight of the words' shared directions vs. the phrase's own direction.
    _WORDS, _PHRASE = 0.85, 0.5
    #: Modality gap: share of the semantic direction in a text embedding (the rest is the
    #: common text direction), in an image feature, and the cosine of the two common directions.
    TEXT_SEMANTIC, IMAGE_SEMANTIC, MODALITY_COSINE = 0.5, 0.6, 0.25
    #: Phrases made only of these words are generic (LERF's canonical negatives and the like).
    GENERIC_WORDS = frozenset({"object", "objects", "thing", "things", "stuff", "texture", "textures", "item", "items"})

    def __init__(self, dim: int = 512, seed: int = 0, objectness: float = 0.0) -> None:
        if dim < 2:
            raise ValueError("dim must be >= 2")
        if not 0.0 <= objectness < 1.0:
            raise ValueError(f"objectness must be in [0, 1), got {objectness}")
        self._dim = int(dim)
        self.seed = int(seed)
        self.objectness = float(objectness)
        self._cache: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return self._dim

    def _direction(self, kind: str, key: str) -> np.ndarray:
        cache_key = f"{kind}:{key}"
        vec = self._cache.get(cache_key)
        if vec is None:
            rng = np.random.default_rng(_hash_seed("ccl-lgs-sim", SIM_VERSION, self.seed, kind, key))
            vec = _unit(rng.standard_normal(self._dim))
            self._cache[cache_key] = vec
        return vec

    @staticmethod
    def tokens(text: str) -> list[str]:
        words = re.findall(r"[a-z0-9]+", text.lower())
        return [w for w in words if w not in _STOPWORDS] or words

    def semantic(self, text: str) -> np.ndarray:
        """``float64 [D]`` unit semantic direction of one phrase (no modality component)."""
        toks = self.tokens(text)
        phrase = self._direction("phrase", " ".join(toks))
        if not toks:
            return phrase
        words = _unit(np.sum([self._direction("word", t) for t in toks], axis=0))
        sem = _unit(self._WORDS * words + self._PHRASE * phrase)
        if self.objectness > 0 and all(t in self.GENERIC_WORDS for t in toks):
            sem = self._with_objectness(sem)
        return sem

    def _with_objectness(self, semantic: np.ndarray) -> np.ndarray:
        g = self.objectness
        return _unit(np.sqrt(1.0 - g * g) * _unit(semantic) + g * self._direction("objectness", "common"))

    def _modality(self, which: str) -> np.ndarray:
        image = self._direction("modality", "image")
        if which == "image":
            return image
        other = self._direction("modality", "text")
        other = _unit(other - np.dot(other, image) * image)
        c = self.MODALITY_COSINE
        return c * image + np.sqrt(1.0 - c * c) * other

    def embed(self, text: str) -> np.ndarray:
        """``float64 [D]`` unit text embedding of one phrase."""
        a = self.TEXT_SEMANTIC
        return _unit(a * self.semantic(text) + np.sqrt(1.0 - a * a) * self._modality("text"))

    def to_image_space(self, semantic: np.ndarray) -> np.ndarray:
        """Unit image features ``[..., D]`` from semantic directions ``[..., D]``."""
        a = self.IMAGE_SEMANTIC
        sem = _unit(semantic)
        if self.objectness > 0:  # every crop also looks like "an object"
            sem = self._with_objectness(sem)
        return _unit(a * sem + np.sqrt(1.0 - a * a) * self._modality("image"))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """``float32 [Q, D]`` unit vectors."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of phrases, not a single string")
        if len(texts) == 0:
            return np.zeros((0, self._dim), dtype=np.float32)
        return np.stack([self.embed(t) for t in texts]).astype(np.float32)

    def spec(self) -> dict:
        return {"kind": self.kind, "version": SIM_VERSION, "dim": self._dim, "seed": self.seed,
                "objectness": self.objectness}

    @staticmethod
    def from_spec(spec: dict) -> SimulatedTextEncoder:
        if spec.get("kind") != SimulatedTextEncoder.kind:
            raise ValueError(f"not a simulator text-encoder spec: {spec!r}")
        if int(spec.get("version", SIM_VERSION)) != SIM_VERSION:
            raise ValueError(f"simulator text encoder version {spec.get('version')} != {SIM_VERSION}")
        return SimulatedTextEncoder(dim=int(spec["dim"]), seed=int(spec.get("seed", 0)),
                                    objectness=float(spec.get("objectness", 0.0)))


# ----------------------------------------------------------------------------- masks
def _shift(a: np.ndarray, dy: int, dx: int, fill: int) -> np.ndarray:
    """``a`` moved by (dy, dx) with ``fill`` entering at the border."""
    out = np.full_like(a, fill)
    h, w = a.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


_NEIGHBOURS = ((0, 1), (0, -1), (1, 0), (-1, 0))


def compact_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` (inverse in ``values``' shape) for integer
    maps, by counting instead of sorting when the value range is small (it is for id maps)."""
    if values.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(values.shape, dtype=np.int64)
    lo, hi = int(values.min()), int(values.max())
    if hi - lo > 1 << 22:
        uniq, inverse = np.unique(values, return_inverse=True)
        return uniq.astype(np.int64), inverse.reshape(values.shape)
    shifted = values.astype(np.int64) - lo
    present = np.flatnonzero(np.bincount(shifted.ravel()))
    lut = np.zeros(hi - lo + 1, dtype=np.int64)
    lut[present] = np.arange(len(present))
    return present + lo, lut[shifted]


def _adjacent_pairs(ids: np.ndarray) -> set[tuple[int, int]]:
    """Unordered pairs of different ids that touch (4-neighbourhood)."""
    pairs: set[tuple[int, int]] = set()
    for dy, dx in ((0, 1), (1, 0)):
        a = ids[: ids.shape[0] - dy, : ids.shape[1] - dx]
        b = ids[dy:, dx:]
        diff = a != b
        lo, hi = np.minimum(a[diff], b[diff]), np.maximum(a[diff], b[diff])
        span = int(ids.max()) + 1 if ids.size else 1
        for code in np.unique(lo.astype(np.int64) * span + hi):
            pairs.add((int(code // span), int(code % span)))
    return pairs


def _occlusion(ids: np.ndarray, background: set[int]) -> np.ndarray:
    """Per compact id ``0..G-1``, the fraction of its boundary touching another foreground
    object: a proxy for being partly hidden, which makes CLIP features of the crop less reliable."""
    n = int(ids.max()) + 1 if ids.size else 0
    is_object = np.ones(n + 1, dtype=bool)  # index nb + 1; the border fill (-1) is no object
    is_object[0] = False
    is_object[[b + 1 for b in background if b < n]] = False
    edge = np.zeros(ids.shape, dtype=bool)
    by_object = np.zeros(ids.shape, dtype=bool)
    for dy, dx in _NEIGHBOURS:
        nb = _shift(ids, dy, dx, -1)
        differs = nb != ids
        edge |= differs
        by_object |= differs & is_object[nb + 1]
    border = np.bincount(ids[edge], minlength=n)
    touch = np.bincount(ids[by_object], minlength=n)
    return touch / np.maximum(border, 1)


def _resize_ids(ids: np.ndarray, image_size: int) -> np.ndarray:
    h, w = ids.shape
    if image_size <= 0 or max(h, w) <= image_size:
        return ids
    s = image_size / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(ids.astype(np.int32), size, interpolation=cv2.INTER_NEAREST)


class SimulatorBackend:
    """Simulated SAM + CLIP + SAM 2 (:class:`~ccl_lgs_ros.priors.types.PriorsBackend`).

    Args:
        cfg: the priors section (``sim_*`` fields, ``association_iou``, ``reseed``,
            ``image_size``).
    """

    name = "simulator"

    def __init__(self, cfg: PriorsConfig | Config) -> None:
        self.cfg = cfg.priors if isinstance(cfg, Config) else cfg
        self._encoder = SimulatedTextEncoder(self.cfg.sim_dim, self.cfg.sim_seed, self.cfg.sim_objectness)
        self._object_cache: dict[tuple[int, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._confuser_cache: dict[str, dict[str, str]] = {}
        self._reference: tuple[str, Capture, list[int]] | None = None

    def text_encoder(self) -> SimulatedTextEncoder:
        return self._encoder

    # ------------------------------------------------------------------ inputs
    def _ground_truth(self, capture: Capture) -> tuple[Capture, list[int]]:
        """The capture holding the ground truth and, per frame of ``capture``, its frame there.

        Normally the capture itself. With ``priors.sim_ground_truth`` (a capture of the same
        scene with instance maps, e.g. the synthetic scene a robot's capture was replayed from)
        every frame is matched to the reference frame with the same camera pose (within 1 cm
        and ~1 degree), so a live capture of a synthetic scene can be simulated too.
        """
        ref = self.cfg.sim_ground_truth
        if not ref:
            return capture, list(range(len(capture.frames)))
        key = f"{ref}:{capture.root}:{len(capture.frames)}"
        if self._reference is None or self._reference[0] != key:
            gt = Capture.load(ref)
            ref_c2w = gt.c2w_all()
            mapping = []
            for i, frame in enumerate(capture.frames):
                dist = np.linalg.norm(ref_c2w[:, :3, 3] - frame.c2w[:3, 3], axis=1)
                j = int(np.argmin(dist)) if dist.size else -1
                turn = np.linalg.norm(ref_c2w[j, :3, :3] - frame.c2w[:3, :3]) if j >= 0 else np.inf
                if j < 0 or dist[j] > 0.01 or turn > 0.02:
                    raise ValueError(f"{capture.root}: frame {i} matches no frame of the ground-truth "
                                     f"capture {ref} (priors.sim_ground_truth)")
                mapping.append(j)
            self._reference = (key, gt, mapping)
        return self._reference[1], self._reference[2]

    def check_inputs(self, capture: Capture) -> None:
        """Raise (ValueError, the messages of the stage itself) unless every frame of ``capture``
        has ground truth: labels, a matching reference frame, an instance map file. Reads poses
        and the capture's JSON only, so the train checks can run it before any stage."""
        gt, mapping = self._ground_truth(capture)
        self._gt_labels(gt)
        for j in mapping:
            if not gt.frames[j].instance_file_path:
                raise ValueError(
                    f"{gt.root}: frame {j} has no instance map; the priors simulator needs instances/ ground truth"
                )

    def _labels(self, capture: Capture) -> tuple[dict[int, str], set[int]]:
        return self._gt_labels(self._ground_truth(capture)[0])

    def _gt_ids(self, capture: Capture, index: int) -> np.ndarray:
        gt, mapping = self._ground_truth(capture)
        ids = gt.load_instances(mapping[index])
        if ids is None:
            raise ValueError(
                f"{gt.root}: frame {mapping[index]} has no instance map; the priors simulator needs instances/ "
                "ground truth"
            )
        return _resize_ids(ids, self.cfg.image_size)

    @staticmethod
    def _gt_labels(capture: Capture) -> tuple[dict[int, str], set[int]]:
        """GT id -> label (0 = background) and the ids marked as background (e.g. the table)."""
        if not capture.instances:
            raise ValueError(
                f"{capture.root}: the priors simulator needs ground truth (ccl_lgs.instances and "
                "instances/ maps, e.g. from `ccl-lgs synth`); use priors.backend=real for real data"
            )
        synth = capture.ccl_extra.get("synth") or {}
        labels = {0: str(synth.get("background_label", "background"))}
        background = {0}
        for inst in capture.instances:
            labels[int(inst["id"])] = str(inst.get("label", f"object {inst['id']}"))
            if inst.get("background"):
                background.add(int(inst["id"]))
        return labels, background

    # ------------------------------------------------------------------ masks
    def _regions(
        self, ids: np.ndarray, level: str, rng: np.random.Generator, background: set[int], none_id: int | None
    ) -> np.ndarray:
        """Corrupted region map ``int64 [H,W]``: region code per pixel, -1 = no mask.

        ``ids`` are compact GT ids ``0..G-1``; ``none_id`` is the one of GT id 0 (no instance).
        Codes are ``id * 64 + part`` (parts 0..63) so the original object stays recoverable.
        """
        c = float(self.cfg.sim_corruption)
        p_split, p_merge, p_miss = (min(1.0, c * v) for v in _PROFILES[level])
        regions = ids.astype(np.int64) * 64
        counts = np.bincount(ids.ravel())
        objects = [k for k in range(len(counts)) if k not in background]
        area = {k: int(a) for k, a in enumerate(counts)}
        total = ids.size
        if none_id is not None and not self.cfg.sim_background:
            regions[ids == none_id] = -1
        if c > 0:
            # All random numbers are drawn up front, independent of c, and compared with
            # thresholds proportional to c: a stronger setting corrupts a superset of what a
            # weaker one does (same seed), so measured inconsistency grows with the setting.
            n = len(counts)
            order = rng.permutation(n)
            u_merge, u_partner, u_split, u_miss, u_angle, u_parts = rng.random((6, n))
            u_dirs = rng.integers(4, size=3)
            u_flip = rng.random((3, *ids.shape))
            # Merge with a touching foreground neighbour (a whole-object mask spilling over).
            parent = {k: k for k in objects}

            def root(k: int) -> int:
                while parent[k] != k:
                    k = parent[k]
                return k

            pairs = [(a, b) for a, b in _adjacent_pairs(ids) if a in parent and b in parent]
            for k in (int(j) for j in order if int(j) in parent):
                partners = sorted(b if a == k else a for a, b in pairs if k in (a, b))
                if partners and u_merge[k] < p_merge:
                    other = partners[int(u_partner[k] * len(partners))]
                    parent[root(k)] = root(other)
            merged = {root(k) for k in objects if root(k) != k}
            for k in objects:
                if root(k) != k:
                    regions[ids == k] = root(k) * 64
                    merged.add(k)
            # Split into parts along a view-dependent direction (bands of equal area).
            for k in objects:
                # Objects seen large are split more often (SAM finds more parts in close-ups).
                size_factor = min(1.0, 0.5 + area[k] / (0.01 * total))
                if k in merged or area[k] < 24 or u_split[k] >= p_split * size_factor:
                    continue
                parts = 2 if level in ("p", "w", "wp") else 2 + int(u_parts[k] * 2)
                yy, xx = np.nonzero(ids == k)
                angle = u_angle[k] * np.pi
                proj = xx * np.cos(angle) + yy * np.sin(angle)
                edges = np.quantile(proj, np.linspace(0, 1, parts + 1)[1:-1])
                part = np.searchsorted(edges, proj)
                regions[yy, xx] = regions[yy, xx] + 1 + part  # parts never collide with the whole (0)
            # Boundary noise: boundary pixels take a neighbouring region's code.
            for it in range(1 + int(2 * c)):
                dy, dx = _NEIGHBOURS[int(u_dirs[it])]
                nb = _shift(regions, dy, dx, -2)
                flip = (nb != regions) & (nb != -2) & (u_flip[it] < _BOUNDARY_FLIP * c)
                regions = np.where(flip, nb, regions)
            # Missed objects (small ones more often).
            for k in objects:
                small = 1.0 if area[k] < 0.004 * total else 0.0
                if u_miss[k] < p_miss * (1.0 + small):
                    regions[(regions // 64) == k] = -1
        return regions

    def _confusers(self, capture: Capture) -> dict[str, str]:
        """Per label of the scene, the other label CLIP would mistake it for: one of the same
        shape when the ground truth records shapes (a can for a cup), else the most similar in
        the simulated CLIP space (shared words first); ties broken by a fixed hash."""
        gt = self._ground_truth(capture)[0]
        labels, background = self._gt_labels(gt)
        shape = {str(inst.get("label")): inst.get("shape") for inst in gt.instances}
        names = sorted({lab for g, lab in labels.items() if g not in background})
        key = "|".join(f"{n}:{shape.get(n)}" for n in names)
        cached = self._confuser_cache.get(key)
        if cached is None:
            sem = {n: self._encoder.semantic(n) for n in names}
            cached = {}

            def likeness(a: str, b: str) -> tuple[bool, float, int]:
                same_shape = shape.get(a) is not None and shape.get(a) == shape.get(b)
                return same_shape, round(float(sem[a] @ sem[b]), 6), _hash_seed("confuser", self.cfg.sim_seed, a, b)

            for a in names:
                others = [b for b in names if b != a]
                if others:
                    cached[a] = max(others, key=functools.partial(likeness, a))
            self._confuser_cache[key] = cached
        return cached

    def _misreads(
        self,
        capture: Capture,
        objects: list[tuple[int, str]],
        background_c: set[int],
        heading: float,
        occlusion: np.ndarray,
        index: int,
    ) -> dict[int, np.ndarray]:
        """Compact object id -> semantic direction, for the objects CLIP misreads in this view.

        A misread object looks mostly like its confuser (:meth:`_confusers`): its semantic
        direction becomes ``unit(sim_misread_keep * own + confuser)``. The chance is
        ``sim_confusion * view * (1 + occlusion)``: ``view = ((1 + cos(heading - phase)) / 2)^2``
        with a fixed phase per object, so misreads cluster in a range of viewing directions (a
        reflection, an unlucky side) instead of being independent per frame, and partly hidden
        objects are misread more. Both levels of a frame share the draw.
        """
        strength = float(self.cfg.sim_confusion)
        if strength <= 0:
            return {}
        keep = float(self.cfg.sim_misread_keep)
        confusers = self._confusers(capture)
        out: dict[int, np.ndarray] = {}
        for j, (g, label) in enumerate(objects):
            other = confusers.get(label)
            if j in background_c or other is None:
                continue
            u_read = np.random.default_rng(_hash_seed("misread", self.cfg.sim_seed, g, index)).random()
            phase = 2.0 * np.pi * np.random.default_rng(_hash_seed("phase", self.cfg.sim_seed, g)).random()
            view = (0.5 * (1.0 + np.cos(heading - phase))) ** 2
            if u_read < strength * view * (1.0 + float(occlusion[j])):
                own = self._encoder.semantic(label)
                out[j] = _unit(keep * own + self._encoder.semantic(other))
        return out

    def _object_vectors(self, g: int, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Label embedding and the two fixed drift directions of GT object ``g`` (cached)."""
        key = (g, label)
        vecs = self._object_cache.get(key)
        if vecs is None:
            d = self._encoder.dim
            dr = np.random.default_rng(_hash_seed("drift", self.cfg.sim_seed, g))
            vecs = (self._encoder.semantic(label), _unit(dr.standard_normal(d)), _unit(dr.standard_normal(d)))
            self._object_cache[key] = vecs
        return vecs

    def _features(
        self,
        masks: np.ndarray,
        ids: np.ndarray,
        k: int,
        split: np.ndarray,
        objects: list[tuple[int, str]],
        heading: float,
        occlusion: np.ndarray,
        rng: np.random.Generator,
        misread: dict[int, np.ndarray] | None = None,
    ) -> np.ndarray:
        """``float16 [K, D]`` unit features of the ``k`` masks.

        ``ids`` are compact GT ids indexing ``objects`` (GT id, label) and ``occlusion``.
        """
        d = self._encoder.dim
        sigma = float(self.cfg.sim_feature_noise)
        valid = masks >= 0
        n_gt = len(objects)
        # Pixel share of every object inside every mask.
        counts = np.bincount(masks[valid] * n_gt + ids[valid], minlength=k * n_gt).reshape(k, n_gt)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        pm, pg = np.nonzero(counts)  # (mask, object) pairs that actually overlap
        base = np.zeros((len(pm), d))
        for j in np.unique(pg):
            emb, a, b = self._object_vectors(*objects[j])
            if misread and int(j) in misread:
                emb = misread[int(j)]  # CLIP reads this object as something else in this view
            # View drift: a smooth function of the camera heading, fixed per object.
            base[pg == j] = emb + sigma * (np.cos(heading) * a + np.sin(heading) * b)
        # Per-view noise, stronger for partly hidden objects.
        noise = _unit(rng.standard_normal((len(pm), d))) * (sigma * (1.0 + occlusion[pg]))[:, None]
        feats = np.zeros((k, d))
        np.add.at(feats, pm, share[pm, pg][:, None] * _unit(base + noise))
        # A part of an object looks less like the whole object to CLIP.
        if split.any():
            feats += split[:, None] * 0.3 * _unit(rng.standard_normal((k, d)))
        return self._encoder.to_image_space(feats).astype(np.float16)

    def frame_priors(self, capture: Capture, index: int, levels: Sequence[str]) -> FramePriors:
        labels, background = self._labels(capture)
        gt_values, ids = compact_ids(self._gt_ids(capture, index))
        objects = [(int(g), labels.get(int(g), f"object {g}")) for g in gt_values]
        background_c = {j for j, g in enumerate(gt_values) if int(g) in background}
        none_id = 0 if gt_values.size and gt_values[0] == 0 else None
        c2w = capture.frames[index].c2w
        forward = -c2w[:3, 2]  # OpenGL cameras look along -z
        heading = float(np.arctan2(forward[1], forward[0]))
        occlusion = _occlusion(ids, background_c)
        misread = self._misreads(capture, objects, background_c, heading, occlusion, index)
        out = FramePriors()
        for level in levels:
            if level not in _PROFILES:
                raise ValueError(f"unknown priors level {level!r}; choose from {ALL_LEVELS}")
            rng = np.random.default_rng(_hash_seed("masks", self.cfg.sim_seed, index, level))
            regions = self._regions(ids, level, rng, background_c, none_id)
            codes, inverse = compact_ids(regions)
            if codes.size and codes[0] == -1:
                masks = inverse.astype(np.int32) - 1
                codes = codes[1:]
            else:
                masks = inverse.astype(np.int32)
            split = (codes % 64 != 0).astype(np.float64)
            feats = self._features(masks, ids, len(codes), split, objects, heading, occlusion, rng, misread)
            out.levels[level] = LevelPriors(masks=masks, features=feats, labels=np.full(len(codes), -1, np.int32))
        return out

    # ------------------------------------------------------------------ association
    def associate(self, capture: Capture, priors: Sequence[FramePriors], levels: Sequence[str]) -> None:
        """Simulated SAM 2 tracking over the frames in capture order (fills labels in place)."""
        self._labels(capture)  # clear error when the capture has no ground truth
        label_of = {int(inst["id"]): inst.get("label") for inst in capture.instances}
        all_ids = sorted({0, *label_of})
        slot = {g: j for j, g in enumerate(all_ids)}
        rate = _IDENTITY_ERROR * float(self.cfg.sim_corruption)
        id_cache: dict[int, np.ndarray] = {}
        for level in levels:
            track: dict[int, int] = {}
            next_label = 0
            for i, fp in enumerate(priors):
                lp = fp.levels[level]
                if i not in id_cache:
                    id_cache[i] = self._gt_ids(capture, i)
                ids = match_shape(id_cache[i], lp.masks.shape)
                dominant, iou = mask_objects(lp.masks, ids, len(lp.labels))
                matched = iou > self.cfg.association_iou
                visible = sorted({int(g) for g in dominant[matched]})
                # New objects get a track: in the first frame always, later only with re-seeding.
                for g in visible:
                    if g not in track and (i == 0 or self.cfg.reseed):
                        track[g] = next_label
                        next_label += 1
                # Identity errors persist, like a real tracker's switches. Uniforms are drawn
                # per frame and object independently of the rate, so errors at a lower rate are
                # a subset of those at a higher one.
                u = np.random.default_rng(_hash_seed("track", self.cfg.sim_seed, level, i)).random((len(all_ids), 3))
                for g in visible:
                    ug = u[slot.get(g, 0)]
                    if g not in track or ug[0] >= rate:
                        continue
                    others = [o for o in visible if o != g and o in track]
                    same = [o for o in others if label_of.get(o) == label_of.get(g)]
                    if others and ug[1] < 0.5:
                        # Objects that look alike (same label) are the ones a tracker confuses.
                        pool = same if same and ug[1] < 0.35 else others
                        o = pool[int(ug[2] * len(pool))]
                        track[g], track[o] = track[o], track[g]
                    elif self.cfg.reseed:
                        track[g] = next_label  # lost and re-acquired as a new object
                        next_label += 1
                    else:
                        del track[g]
                labels = np.full(len(lp.labels), -1, dtype=np.int32)
                for m in np.flatnonzero(matched):
                    labels[m] = track.get(int(dominant[m]), -1)
                lp.labels = labels


def match_shape(ids: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if ids.shape == shape:
        return ids
    return cv2.resize(ids.astype(np.int32), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def mask_objects(masks: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``k`` masks: its dominant GT id and the IoU with that object's pixels.

    Args:
        masks: ``int32 [H,W]`` mask map (-1 = none).
        ids: ``int [H,W]`` ground-truth ids of the same frame.
        k: number of masks.

    Returns:
        ``dominant int64 [k]`` and ``iou float64 [k]``.
    """
    gt_values, gt_index = compact_ids(ids)
    n_gt = len(gt_values)
    gt_area = np.bincount(gt_index.ravel(), minlength=n_gt).astype(np.float64)
    valid = masks >= 0
    inter = np.bincount(masks[valid] * n_gt + gt_index[valid], minlength=k * n_gt).reshape(k, n_gt).astype(np.float64)
    best = inter.argmax(axis=1) if k else np.zeros(0, dtype=np.int64)
    overlap = inter[np.arange(k), best]
    mask_area = inter.sum(axis=1)
    iou = overlap / np.maximum(mask_area + gt_area[best] - overlap, 1.0)
    return gt_values[best].astype(np.int64), iou


# ----------------------------------------------------------------------------- measurement
__all__ = [
    "ALL_LEVELS",
    "SimulatedTextEncoder",
    "SimulatorBackend",
    "compact_ids",
    "mask_objects",
    "match_shape",
]
