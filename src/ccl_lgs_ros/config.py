"""The one configuration tree of ccl_lgs.

Every tunable value has exactly one default, here, with its documentation in the field's
``metadata["help"]``. The command line (``--set section.field=value``), the ROS node
(parameters named ``section.field``) and YAML files (``config/*.yaml``) are all derived from
these dataclasses; nothing else defines defaults.

Sections map to pipeline stages: ``capture`` (keyframes), ``rgb`` (Gaussian reconstruction),
``priors`` (SAM / SAM 2 / CLIP or the simulator), ``field`` (codebook + semantic field),
``query`` (3D retrieval) and ``node`` (the ROS 2 node).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FORMAT_VERSION = 1


def _f(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse wording
    """A dataclass field with documentation (and optional ``choices`` / ``min`` / ``max``)."""
    meta = {"help": help, **kw}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class CaptureConfig:
    """Keyframe selection and capture persistence."""

    min_translation: float = _f(0.05, "Keep a frame when the camera moved more than this (m).", min=0.0)
    min_rotation_deg: float = _f(5.0, "Keep a frame when the camera turned more than this (deg).", min=0.0)
    blur_rejection: bool = _f(True, "Reject frames much blurrier than recent ones.")
    blur_ratio: float = _f(
        0.4,
        "A frame is blurry when its Laplacian variance is below this fraction of the recent median.",
        min=0.0,
        max=1.0,
    )
    blur_window: int = _f(15, "Number of recent frames the blur median is taken over.", min=1)
    max_keyframes: int = _f(2000, "Maximum number of keyframes kept.", min=1)
    full_policy: str = _f(
        "stop",
        "What to do when max_keyframes is reached: 'stop' keeps the first ones, "
        "'thin' drops every second keyframe and doubles the motion thresholds.",
        choices=["stop", "thin"],
    )
    max_image_pixels: int = _f(4096 * 4096, "Images with more pixels than this are refused.", min=1)
    max_position: float = _f(
        1.0e6,
        "Poses with a coordinate larger than this (m, absolute, in the fixed frame) are refused as implausible.",
        min=0.0,
    )
    image_format: str = _f("png", "File format of stored colour images.", choices=["png", "jpg"])
    jpeg_quality: int = _f(95, "JPEG quality when image_format is jpg.", min=1, max=100)


@dataclass
class RgbConfig:
    """RGB 3D Gaussian splatting (geometry and colour, frozen afterwards)."""

    backend: str = _f(
        "auto",
        "Renderer: 'gsplat' (CUDA), 'torch' (pure PyTorch, any device) or 'auto' "
        "(gsplat on CUDA, torch otherwise).",
        choices=["auto", "gsplat", "torch"],
    )
    iterations: int = _f(7000, "Optimisation steps of the RGB reconstruction.", min=0)
    downscale: int = _f(1, "Integer image downscale factor used for training.", min=1)
    max_init_points: int = _f(100_000, "Cap on the number of initial Gaussians.", min=1)
    sh_degree: int = _f(3, "Spherical-harmonics degree of the colour.", min=0, max=3)
    ssim_lambda: float = _f(0.2, "Weight of the D-SSIM term (1 - lambda goes to L1).", min=0.0, max=1.0)
    depth_lambda: float = _f(0.0, "Weight of the optional depth loss (needs depth images).", min=0.0)
    densify: bool = _f(True, "Densify and prune with gsplat's DefaultStrategy.")
    holdout_every: int = _f(8, "Every n-th frame is held out for evaluation (0 = none).", min=0)
    checkpoint_every: int = _f(1000, "Write a resumable checkpoint every n steps.", min=1)
    background: str = _f("black", "Background colour for rendering.", choices=["black", "white"])
    seed: int = _f(0, "Random seed of the reconstruction.")
    max_gaussians: int = _f(
        1_000_000, "Densification stops growing once there are this many Gaussians (0 = no cap).", min=0
    )
    lr_means: float = _f(1.6e-4, "Adam learning rate of the means (scene units; decays to 1% at the end).", min=0.0)
    lr_scales: float = _f(5e-3, "Adam learning rate of the log-scales.", min=0.0)
    lr_quats: float = _f(1e-3, "Adam learning rate of the rotations.", min=0.0)
    lr_opacities: float = _f(5e-2, "Adam learning rate of the opacity logits.", min=0.0)
    lr_sh: float = _f(2.5e-3, "Adam learning rate of the SH DC colour (higher orders get 1/20 of it).", min=0.0)
    refine_every: int = _f(
        100, "Densify/prune every n steps (shorter runs: every max(10, iterations // 20) steps).", min=1
    )
    refine_start_frac: float = _f(0.07, "Densification starts after this fraction of the iterations.", min=0.0, max=1.0)
    refine_stop_frac: float = _f(0.8, "Densification stops after this fraction of the iterations.", min=0.0, max=1.0)
    grow_grad2d: float = _f(0.0002, "Screen-space gradient above which a Gaussian is split or cloned.", min=0.0)
    sh_interval: int = _f(
        1000, "Raise the active SH degree every n steps (capped so the full degree is reached by mid-run).", min=1
    )


@dataclass
class PriorsConfig:
    """2D semantic priors: SAM two-level masks, CLIP mask features, SAM 2 association."""

    backend: str = _f(
        "real",
        "'real' runs SAM / SAM 2 / OpenCLIP from the checkpoints below; 'simulator' is the "
        "documented stand-in that reads ground-truth instance maps (tests and demo only).",
        choices=["real", "simulator"],
    )
    sam_model_type: str = _f(
        "auto",
        "SAM architecture; 'auto' reads it from the checkpoint's tensor shapes (vit_b / vit_l / vit_h, or "
        "'reduced', the project's random-weight test size). A named type that does not fit the file is "
        "an error naming the right one.",
        choices=["auto", "vit_h", "vit_l", "vit_b", "reduced"],
    )
    sam_checkpoint: str = _f("", "Path to the SAM checkpoint (e.g. sam_vit_h_4b8939.pth).")
    sam2_config: str = _f(
        "auto",
        "SAM 2 model config name (e.g. configs/sam2.1/sam2.1_hiera_l.yaml); 'auto' reads it from the "
        "checkpoint (SAM 2 or 2.1, hiera t / s / b+ / l). A config that does not fit the file is an error "
        "naming the right one.",
    )
    sam2_checkpoint: str = _f("", "Path to the SAM 2 checkpoint (e.g. sam2.1_hiera_large.pt).")
    clip_model: str = _f("ViT-B-16", "OpenCLIP architecture.")
    clip_pretrained: str = _f(
        "laion2b_s34b_b88k", "OpenCLIP pretrained tag (used to name/download weights when online)."
    )
    clip_checkpoint: str = _f("", "Path to OpenCLIP weights (open_clip_pytorch_model.bin).")
    points_per_side: int = _f(32, "SAM prompt grid size (points per side).", min=1)
    pred_iou_thresh: float = _f(0.7, "Minimum SAM predicted IoU of a kept mask.", min=0.0, max=1.0)
    stability_score_thresh: float = _f(0.85, "Minimum SAM stability score.", min=0.0, max=1.0)
    overlap_thresh: float = _f(0.8, "Masks overlapping a better mask more than this are removed.")
    min_mask_area: int = _f(100, "Masks smaller than this (pixels) are dropped.", min=0)
    association_iou: float = _f(0.5, "IoU above which a mask takes a tracked object's label.")
    reseed: bool = _f(True, "Re-seed the tracker with unlabelled masks of later frames.")
    association_window: int = _f(
        32,
        "Frames per SAM 2 propagation window: a pass never tracks further. Consecutive windows share "
        "priors.association_overlap frames, whose objects the next window tracks on under their labels.",
        min=2,
    )
    association_overlap: int = _f(
        8,
        "Frames shared by consecutive SAM 2 windows (1 .. association_window - 1): an object labelled "
        "anywhere in the overlap keeps its label in the next window; the overlap counts in the budget.",
        min=1,
    )
    association_patience: int = _f(
        2,
        "A SAM 2 pass stops after this many consecutive frames in which none of its objects labelled a new mask.",
        min=1,
    )
    association_budget: float = _f(
        3.0,
        "Cap on SAM 2 propagated frames as a multiple of the frame count (0 = no cap), spent window by "
        "window; passes it refuses are logged and their masks keep labels of their own (untracked).",
        min=0.0,
    )
    sam2_image_size: int = _f(
        0, "Input size of the SAM 2 tracker in pixels (0 = the config's 1024; smaller is faster, coarser).", min=0
    )
    granularity_aware: bool = _f(False, "GAGS granularity-aware prompting (needs depth).")
    image_size: int = _f(0, "Longest image side fed to the priors (0 = capture resolution).", min=0)
    points_per_batch: int = _f(64, "SAM point prompts decoded together (memory vs speed).", min=1)
    box_nms_thresh: float = _f(
        0.7, "Box IoU above which a SAM mask is a duplicate of a better one.", min=0.0, max=1.0
    )
    clip_batch_size: int = _f(64, "Mask crops encoded together by the CLIP image encoder.", min=1)
    precision: str = _f(
        "auto",
        "Model precision: 'auto' (bf16 autocast on CUDA, fp32 on CPU), 'fp32' or 'bf16'.",
        choices=["auto", "fp32", "bf16"],
    )
    allow_download: bool = _f(
        False,
        "When clip_checkpoint is empty, let OpenCLIP fetch clip_pretrained by name (needs a "
        "network connection); otherwise a missing checkpoint is an error.",
    )
    association_max_objects: int = _f(
        64, "Objects the SAM 2 tracker follows in one pass (memory bound; more seeds = more passes).", min=1
    )
    gags_patches: int = _f(8, "GAGS prompting: patches per image side.", min=1)
    sim_corruption: float = _f(
        0.3,
        "Simulator only: strength 0..1 of view-dependent mask corruption (splits, merges, "
        "boundary noise, misses) and tracker identity errors.",
        min=0.0,
        max=1.0,
    )
    sim_feature_noise: float = _f(0.15, "Simulator only: per-view noise of mask features.", min=0.0)
    sim_confusion: float = _f(
        0.0,
        "Simulator only: how often CLIP misreads an object as another label of the scene (one of the "
        "same shape, else the most similar; chance per object and view = this x a view-direction "
        "factor in 0..1 x (1 + occlusion)).",
        min=0.0,
        max=1.0,
    )
    sim_misread_keep: float = _f(
        0.35,
        "Simulator only: share of an object's own semantics left in a misread CLIP feature, "
        "unit(keep x own + confuser): near 0 the view looks entirely like the confuser, near 1 the "
        "misread is a near tie between the two labels.",
        min=0.0,
        max=0.99,
    )
    sim_objectness: float = _f(
        0.0,
        "Simulator only: share of a common 'objectness' direction in every image feature and in "
        "generic phrases ('object', 'things', 'stuff', 'texture', ...), so that LERF's canonical "
        "negatives score close to an object's own label, as with CLIP (0: unrelated words; the "
        "relevance of a matching label then saturates near 0.95).",
        min=0.0,
        max=0.95,
    )
    sim_dim: int = _f(512, "Simulator only: dimension of the simulated CLIP space.", min=8)
    sim_seed: int = _f(0, "Simulator only: random seed.")
    sim_ground_truth: str = _f(
        "",
        "Simulator only: a capture of the same scene with instances/ ground truth; each frame takes "
        "the instance map of the reference frame with the same pose (for live captures of a "
        "synthetic scene replayed over ROS). Empty = the capture's own ground truth.",
    )
    sim_background: bool = _f(
        True,
        "Simulator only: pixels without a ground-truth instance get one background mask "
        "(like SAM's floor/wall masks).",
    )


@dataclass
class FieldConfig:
    """Contrastive codebook and the semantic Gaussian field (CCL-LGS and variants)."""

    method: str = _f(
        "ccl", "'ccl' (CCL-LGS), 'gags' (granularity-aware distillation) or 'cgc' "
        "(contrastive Gaussian clustering).", choices=["ccl", "gags", "cgc"]
    )
    levels: list = _f(["sp", "wp"], "Mask levels trained (CCL-LGS: sub-part+part, whole+part).")
    codebook_size: int = _f(64, "Number of codebook prototypes N per level.", min=2)
    codebook_iterations: int = _f(2000, "Optimisation steps of the codebook.", min=0)
    codebook_lr: float = _f(1e-2, "Learning rate of the codebook.", min=0.0)
    lambda_pull: float = _f(0.25, "Weight of the pull loss (same tracked object).", min=0.0)
    lambda_push: float = _f(0.25, "Weight of the push loss (different tracked objects).", min=0.0)
    push_margin: float = _f(0.7, "Cosine margin m of the push loss.")
    feature_dim: int = _f(8, "Semantic feature channels per Gaussian and level.", min=1)
    iterations: int = _f(30000, "Optimisation steps of the semantic field.", min=0)
    lr: float = _f(
        1e-3, "Adam learning rate of the field (betas 0.9, 0.999); the paper's 1e-3 is for 30k steps, "
        "short runs need more (the tiny preset uses 1e-2).", min=0.0
    )
    spatial_lambda: float = _f(
        0.0, "Weight of the CGC 3D spatial-similarity regulariser (0 = off; on for 'cgc').", min=0.0
    )
    spatial_knn: int = _f(8, "Neighbours of the spatial regulariser.", min=1)
    batch_views: int = _f(1, "Training views rendered together per field step.", min=1)
    codebook_frames_per_batch: int = _f(
        8, "Frames whose masks form one codebook minibatch (pull/push pairs span them).", min=1
    )
    gags_entropy: float = _f(0.1, "GAGS: weight of the granularity-entropy term.", min=0.0)
    gags_consistency: float = _f(0.1, "GAGS: weight of the in-mask feature-consistency term.", min=0.0)
    checkpoint_every: int = _f(1000, "Write a resumable field checkpoint every n steps.", min=1)
    seed: int = _f(0, "Random seed of codebook and field.")
    query_codes: str = _f(
        "lifted",
        "Per-Gaussian codes of the query index: 'decoded' (each Gaussian's feature through the "
        "decoder), 'lifted' (2D index maps voted onto Gaussians through their rendering weights; for "
        "gags / cgc the field's own rendered pixel codes) or 'combined' (lifted where a Gaussian was "
        "seen with a clear majority, else decoded).",
        choices=["decoded", "lifted", "combined"],
    )


@dataclass
class QueryConfig:
    """3D retrieval: text -> matching object instances."""

    negatives: list = _f(
        ["object", "things", "stuff", "texture"], "Canonical negative phrases of the relevance."
    )
    threshold: float = _f(
        0.55,
        "Absolute relevance floor: a Gaussian is selected only above it, and a query whose best "
        "relevance stays below it finds nothing (0.5 = no better than a negative phrase).",
        min=0.0, max=1.0,
    )
    relative_threshold: float = _f(
        0.7,
        "A Gaussian is also selected only when its margin over 0.5 reaches this fraction of the "
        "best Gaussian's margin (relevance >= 0.5 + f * (best - 0.5)).",
        min=0.0, max=1.0,
    )
    min_opacity: float = _f(0.1, "Gaussians less opaque than this are ignored.", min=0.0, max=1.0)
    cluster_eps: float = _f(0.05, "DBSCAN neighbourhood radius in metres (world frame).", min=0.0)
    cluster_min_points: int = _f(10, "DBSCAN minimum points of a core Gaussian.", min=1)
    min_instance_gaussians: int = _f(20, "Instances with fewer Gaussians are dropped.", min=1)
    point_spacing: float = _f(0.01, "Spacing of the sampled surface point cloud (m).", min=0.0)
    max_index_bytes: int = _f(
        2 * 1024**3,
        "A scene's query_index.npz whose arrays declare more bytes than this (uncompressed) is refused "
        "before anything is inflated.",
        min=1,
    )
    max_instances: int = _f(0, "Maximum instances returned per query (0 = all).", min=0)
    max_query_chars: int = _f(256, "Longer queries are refused.", min=1)
    temperature: float = _f(10.0, "Softmax temperature of the relevance (LERF uses 10).", min=0.0)
    level_mode: str = _f(
        "best",
        "How levels combine: 'best' takes the level whose highest relevance is largest (LERF "
        "protocol), 'max' takes each Gaussian's maximum over the levels.",
        choices=["best", "max"],
    )
    min_confidence: float = _f(
        0.0, "Gaussians whose top codebook probability is below this are ignored.", min=0.0, max=1.0
    )
    max_scale_fraction: float = _f(
        0.05,
        "Gaussians whose largest axis exceeds this fraction of the scene's bounding-box diagonal "
        "are ignored (huge background splats).",
        min=0.0,
    )
    cluster_method: str = _f(
        "voxel",
        "Instance splitting: 'voxel' (DBSCAN-like connected components on a voxel grid of side "
        "cluster_eps, fast) or 'dbscan' (open3d DBSCAN on the selected Gaussians, slow).",
        choices=["voxel", "dbscan"],
    )
    max_points_per_gaussian: int = _f(
        64, "Cap on surface points sampled from one Gaussian before voxel downsampling.", min=1
    )
    clip_cloud: bool = _f(
        True,
        "Drop surface-cloud points that lie outside the axis-aligned box of the instance's Gaussian "
        "centres grown by clip_cloud_margin: the 2-sigma tails that its largest Gaussians sample "
        "past the object. Gaussians, centroid and boxes are not changed (they come from the centres).",
    )
    clip_cloud_margin: float = _f(
        1.0,
        "Margin of clip_cloud, in typical Gaussian radii of the instance (the median over its "
        "Gaussians of the middle axis scale, 1 sigma).",
        min=0.0,
    )
    embedding_cache_size: int = _f(512, "Text embeddings kept in the LRU cache.", min=0)
    cloud_cache_mb: float = _f(
        128.0,
        "Memory for precomputed surface clouds: the cloud at point_spacing is sampled for the whole "
        "scene when it is loaded, other spacings per code on first use (then cached, least recently "
        "used dropped first). 0 = sample the cloud on every query.",
        min=0.0,
    )


@dataclass
class NodeConfig:
    """The ROS 2 mapping node."""

    image_topic: str = _f("/camera/color/image_raw", "Colour image (Image or CompressedImage).")
    camera_info_topic: str = _f("/camera/color/camera_info", "CameraInfo of the colour image.")
    depth_topic: str = _f("", "Aligned depth image (16UC1 mm or 32FC1 m); empty = none.")
    pose_source: str = _f(
        "tf", "'tf' (camera optical frame in fixed_frame via tf2_ros) or 'topic'.",
        choices=["tf", "topic"],
    )
    pose_topic: str = _f("/camera/pose", "Pose topic (PoseStamped, Odometry or TransformStamped).")
    pose_topic_type: str = _f(
        "PoseStamped", "Message type of pose_topic.",
        choices=["PoseStamped", "Odometry", "TransformStamped"],
    )
    camera_in_body: list = _f(
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        "Static camera optical frame in the pose topic's body frame: x y z qx qy qz qw.",
    )
    max_pose_gap: float = _f(0.1, "Largest time gap (s) between an image and a pose.", min=0.0)
    tf_timeout: float = _f(0.1, "How long to wait for a transform (s).", min=0.0)
    fixed_frame: str = _f("map", "The robot's fixed frame; all outputs are in it.")
    device: str = _f("cuda", "Device of the training process ('cuda', 'cuda:1', 'cpu').")
    capture_dir: str = _f("~/.ros/ccl_lgs/capture", "Capture folder written by the node.")
    scene_dir: str = _f("~/.ros/ccl_lgs/scenes", "Folder of trained scenes.")
    allowed_roots: list = _f(
        ["~/.ros/ccl_lgs"], "Paths a caller may name (load scene, capture folder) must lie inside these."
    )
    serve_only: bool = _f(False, "Do not capture; only load and serve a trained scene.")
    initial_scene: str = _f("", "Scene loaded at start (serve-only robots).")
    train_preset: str = _f("default", "Preset used by the train action when the goal names none.")
    publish_rate: float = _f(1.0, "Rate (Hz) of status and scene-cloud republishing.", min=0.0)
    sensor_qos: str = _f(
        "sensor_data",
        "QoS of the image/depth/camera_info subscriptions: 'sensor_data' (best effort, matches every "
        "camera driver) or 'reliable' (no drops; needs a reliable publisher, e.g. the replay tool).",
        choices=["sensor_data", "reliable"],
    )
    capture_on_start: bool = _f(True, "Start capturing keyframes when the node starts (not in serve-only mode).")
    depth_max_gap: float = _f(0.02, "Largest stamp difference (s) between a colour image and its depth image.", min=0.0)
    min_train_keyframes: int = _f(3, "The train action refuses captures with fewer keyframes.", min=1)
    max_pending_images: int = _f(
        8, "Images kept while waiting for a newer pose (pose-topic mode); older ones are dropped.", min=0
    )
    max_stamp_skew: float = _f(
        10.0,
        "Poses stamped more than this (s) before or after the newest image are refused one by one (a clock "
        "jump is accepted after 5 images in a row agree on the new time); images that far from the newest "
        "image likewise.",
        min=0.0,
    )
    checkpoint_dirs: list = _f(
        [],
        "Folders a scene's text encoder checkpoint may come from, besides the scene folder and allowed_roots "
        "(a scene.json naming a file elsewhere is refused).",
    )
    query_queue_depth: int = _f(
        1000,
        "History depth of the /semantic_query request queue (DDS, read at start): requests beyond it "
        "would be dropped by DDS unanswered, so keep it above the largest burst of concurrent calls.",
        min=1,
        max=100_000,
    )
    query_executor: str = _f(
        "events",
        "How /semantic_query is served (read at start): 'events' = by a small node of its own "
        "(<node name>_query) on rclpy's C++ EventsExecutor in one thread, queries one after another "
        "(a fraction of the CPU per call of the Python executor; falls back to 'threads' where rclpy "
        "has no EventsExecutor, e.g. Humble); 'threads' = on the mapping node's multi-threaded "
        "executor, up to max_queries_in_flight at once.",
        choices=["events", "threads"],
    )
    max_queries_in_flight: int = _f(
        32,
        "Queries the node works on at once (read at start); a request arriving while this many are "
        "in flight is answered at once with success false and a 'busy' message (retry later).",
        min=1,
        max=256,
    )


@dataclass
class DistributedConfig:
    """Training on several processes (torch.distributed; see README "Training on several GPUs or machines")."""

    nproc: int = _f(
        1,
        "Processes (ranks) `ccl-lgs train` starts on this machine through torchrun (one per GPU on "
        "CUDA); 1 = one process, no torch.distributed. Ignored when already started by torchrun.",
        min=1,
    )
    nnodes: int = _f(1, "Machines taking part (torchrun --nnodes); > 1 needs rdzv_endpoint.", min=1)
    rdzv_endpoint: str = _f(
        "",
        "HOST:PORT of torchrun's c10d rendezvous for several machines (the same on every machine); "
        "empty = this machine only, rendezvous on 127.0.0.1.",
    )
    rdzv_id: str = _f("ccl-lgs", "Job id of the rendezvous (the same on every machine of one run).")
    timeout_s: float = _f(
        1800.0,
        "Seconds a rank waits in a collective (barrier, all-reduce) before it gives up; a rank that "
        "dies is noticed at once through its closed connection, this bounds a silent hang (it also "
        "bounds how long the other ranks wait while rank 0 alone runs association or the codebook).",
        min=1.0,
    )
    scale_steps: bool = _f(
        True,
        "Data-parallel stages (rgb, field) run iterations / world_size steps of world_size views each "
        "(gsplat simple_trainer's steps_scaler = 1 / world_size), so the run sees about as many views "
        "as one process; false = the full iteration count (more views in total, no speed-up).",
    )
    log_dir: str = _f("", "Folder of the per-rank log files of ranks > 0; empty = SCENE/logs.")
    gsplat_distributed: bool = _f(
        False,
        "RGB stage on CUDA: partition the Gaussians across ranks and render with gsplat's "
        "rasterization(distributed=True) (scenes larger than one GPU's memory) instead of a full copy "
        "per rank with averaged gradients.",
    )


@dataclass
class ViewerConfig:
    """The browser viewer of the splats (``ccl-lgs view``; inside the node with ``viewer.serve``)."""

    serve: bool = _f(
        False,
        "The mapping node starts the browser viewer (viser) on the scene it serves: it follows scene "
        "swaps and shows the last /semantic_query answer. Off by default.",
    )
    host: str = _f(
        "127.0.0.1",
        "Interface the viewer's web server binds. Loopback by default (browsers on this machine only); "
        "another address (e.g. 0.0.0.0) is an explicit choice that shows the page and the scene, "
        "without authentication, to every machine that can reach it.",
    )
    port: int = _f(8080, "TCP port of the viewer (the next free one is taken when it is in use).", min=1, max=65535)
    max_splats: int = _f(
        10_000,
        "Level of detail: the page draws at most this many Gaussians, the most visible ones (opacity x "
        "largest cross-section), each enlarged to cover for the left-out ones of its grid cell; while an "
        "answer is shown, up to half of them are the answer's own. 0 draws all. Each splat costs the "
        "browser every frame: without a GPU (software WebGL, 2 CPU cores) a frame takes about 10 ms per "
        "1,000 splats, and a query waits for the frame in flight (bench/bench_viewer.py). With a GPU, "
        "raise it or use 0.",
        min=0,
    )


@dataclass
class Config:
    """Root of the configuration tree.

    (Section fields use ``dataclasses.field`` explicitly: the ``field`` section name shadows it.)
    """

    device: str = _f("cpu", "Torch device of the pipeline ('cpu', 'cuda', 'cuda:0').")
    capture: CaptureConfig = dataclasses.field(default_factory=CaptureConfig)
    rgb: RgbConfig = dataclasses.field(default_factory=RgbConfig)
    priors: PriorsConfig = dataclasses.field(default_factory=PriorsConfig)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    query: QueryConfig = dataclasses.field(default_factory=QueryConfig)
    node: NodeConfig = dataclasses.field(default_factory=NodeConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    viewer: ViewerConfig = dataclasses.field(default_factory=ViewerConfig)


#: Named presets: overrides applied on top of the defaults (then YAML, then explicit overrides).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {
        "rgb.iterations": 3000,
        "field.iterations": 5000,
        "field.codebook_iterations": 1000,
    },
    # Small enough for 2 CPU cores in a test or the demo.
    "tiny": {
        "rgb.iterations": 300,
        "rgb.sh_degree": 1,
        "rgb.checkpoint_every": 100,
        "rgb.max_init_points": 6000,
        "rgb.max_gaussians": 10000,
        # Depth back-projection already gives a dense start; one densification step on a short
        # run can multiply the count tenfold, which costs more than it gains on 2 CPU cores.
        "rgb.densify": False,
        "field.iterations": 300,
        # Adam moves a parameter by about lr per step: at the paper's 1e-3, 300 steps leave the
        # per-Gaussian features near their random start (held-out 2D mIoU 0.45 instead of 0.89 on
        # the pipeline benchmark); a 100x shorter run needs a larger step.
        "field.lr": 1e-2,
        "field.codebook_iterations": 300,
        "field.codebook_size": 32,
    },
}


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def _resolved_type(owner: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(owner)
    return hints[f.name]


def iter_fields(cfg: Config | None = None) -> list[tuple[str, dataclasses.Field, Any, type]]:
    """All leaf fields as ``(dotted_name, field, value, type)``, in declaration order."""
    cfg = cfg if cfg is not None else Config()
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            sec_type = type(value)
            for sf in dataclasses.fields(value):
                out.append((f"{f.name}.{sf.name}", sf, getattr(value, sf.name), _resolved_type(sec_type, sf)))
        else:
            out.append((f.name, f, value, _resolved_type(Config, f)))
    return out


def _coerce(name: str, value: Any, typ: Any, f: dataclasses.Field) -> Any:
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                value = True
            elif low in ("0", "false", "no", "off"):
                value = False
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected a boolean, got {value!r}")
    elif typ is int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        value = float(value)
        if value != value:
            raise ConfigError(f"{name}: NaN is not a valid value")
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
    elif typ is list or origin is list:
        if isinstance(value, str):
            text = value.strip()
            value = yaml.safe_load(text) if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        value = list(value)
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{name}: {value!r} is not one of {meta['choices']}")
    if "min" in meta and isinstance(value, (int, float)) and value < meta["min"]:
        raise ConfigError(f"{name}: {value!r} is below the minimum {meta['min']}")
    if "max" in meta and isinstance(value, (int, float)) and value > meta["max"]:
        raise ConfigError(f"{name}: {value!r} is above the maximum {meta['max']}")
    return value


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set ``section.field`` (or a root field) on ``cfg``, validating type and range."""
    parts = dotted.split(".")
    target: Any = cfg
    owner: type = Config
    for part in parts[:-1]:
        if not hasattr(target, part) or not dataclasses.is_dataclass(getattr(target, part)):
            raise ConfigError(f"unknown configuration section {part!r} in {dotted!r}")
        target = getattr(target, part)
        owner = type(target)
    leaf = parts[-1]
    fields = {f.name: f for f in dataclasses.fields(target)}
    if leaf not in fields or dataclasses.is_dataclass(getattr(target, leaf)):
        raise ConfigError(f"unknown configuration key {dotted!r}")
    f = fields[leaf]
    setattr(target, leaf, _coerce(dotted, value, _resolved_type(owner, f), f))


def apply_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    for key, value in overrides.items():
        set_value(cfg, key, value)
    return cfg


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def parse_assignments(items: list[str] | None) -> dict[str, str]:
    """Parse ``["a.b=1", "c=x"]`` command-line assignments."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"expected section.field=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def load_config(
    yaml_path: str | Path | None = None,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults <- preset <- YAML file <- explicit overrides.

    The YAML file may be nested (``rgb: {iterations: 10}``), flat (``rgb.iterations: 10``) or a
    ROS 2 params file (``<node>: {ros__parameters: {...}}``).
    """
    cfg = Config()
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        apply_overrides(cfg, PRESETS[preset])
    if yaml_path:
        with open(yaml_path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{yaml_path}: expected a mapping at the top level")
        # ROS 2 params file: take the first node's ros__parameters.
        for value in data.values():
            if isinstance(value, Mapping) and "ros__parameters" in value:
                data = value["ros__parameters"]
                break
        apply_overrides(cfg, _flatten(data))
    if overrides:
        apply_overrides(cfg, overrides)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain-data view (JSON/YAML serialisable)."""
    return dataclasses.asdict(cfg)


def to_flat_dict(cfg: Config) -> dict[str, Any]:
    return {name: value for name, _, value, _ in iter_fields(cfg)}


def from_dict(data: Mapping[str, Any]) -> Config:
    """Inverse of :func:`to_dict` (unknown keys are an error)."""
    return apply_overrides(Config(), _flatten(data))


def digest(cfg_part: Any) -> str:
    """Stable hash of a config (section), used to invalidate caches."""
    import hashlib

    is_instance = dataclasses.is_dataclass(cfg_part) and not isinstance(cfg_part, type)
    data = dataclasses.asdict(cfg_part) if is_instance else cfg_part  # type: ignore[arg-type]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def field_help(dotted: str) -> str:
    for name, f, _, _ in iter_fields():
        if name == dotted:
            return str(f.metadata.get("help", ""))
    raise ConfigError(f"unknown configuration key {dotted!r}")


__all__ = [
    "FORMAT_VERSION",
    "PRESETS",
    "CaptureConfig",
    "Config",
    "ConfigError",
    "DistributedConfig",
    "FieldConfig",
    "NodeConfig",
    "PriorsConfig",
    "QueryConfig",
    "RgbConfig",
    "ViewerConfig",
    "apply_overrides",
    "digest",
    "field_help",
    "from_dict",
    "iter_fields",
    "load_config",
    "parse_assignments",
    "set_value",
    "to_dict",
    "to_flat_dict",
]
