"""The ``ccl-lgs`` command line.

Subcommands import their stage lazily so ``ccl-lgs --help`` stays fast. Configuration comes
from the one config tree: ``--preset``, ``--config FILE.yaml`` and ``--set section.field=value``
(repeatable), in that order of precedence (later wins).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .config import PRESETS, Config, ConfigError, ViewerConfig, load_config, parse_assignments
from .io import json_text

log = logging.getLogger("ccl_lgs")


def _add_config_args(p: argparse.ArgumentParser, preset_default: str | None = None) -> None:
    p.add_argument("--preset", default=preset_default, choices=sorted(PRESETS),
                   help="named settings preset (applied before --config and --set)")
    p.add_argument("--config", type=Path, default=None, help="YAML file of settings (nested, flat or ROS params)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one setting; repeatable (see `ccl-lgs config`)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: config 'device')")


def _config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = parse_assignments(args.overrides)
    if getattr(args, "device", None):
        overrides["device"] = args.device
    return load_config(args.config, preset=args.preset, overrides=overrides)


def _print_json(data: Any) -> None:
    sys.stdout.write(json_text(data, indent=2))


# ----------------------------------------------------------------------------- commands
def cmd_info(args: argparse.Namespace) -> int:
    from .capture.importers import capture_info

    info = capture_info(args.path)
    if args.json:
        _print_json(info)
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .capture.importers import import_capture

    kwargs: dict[str, Any] = {"fmt": args.format, "background": args.background}
    if args.max_frames:
        kwargs["max_frames"] = args.max_frames
    if args.downscale != 1:
        kwargs["downscale"] = args.downscale
    capture = import_capture(args.src, args.out, **kwargs)
    print(f"imported {len(capture.frames)} frames into {args.out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .testing.synth import generate_scene

    capture = generate_scene(args.out, seed=args.seed, width=args.width, height=args.height,
                             num_frames=args.frames, num_objects=args.objects)
    print(f"wrote synthetic scene with {len(capture.frames)} frames and "
          f"{len(capture.instances)} objects to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from . import distributed as dist
    from .pipeline import train

    cfg = _config_from_args(args)
    if args.nproc:
        cfg.distributed.nproc = args.nproc
    d = cfg.distributed
    if not dist.under_launcher() and dist.wants_launch(d.nproc, d.nnodes):
        # `--nproc N` without torchrun: start torchrun with this same command line.
        # (--nproc is dropped: torchrun's parser would take it for an abbreviation of its own option)
        own = dist.strip_option(args.argv, "--nproc")
        argv = dist.launcher_argv(d.nproc, d.nnodes, d.rdzv_endpoint, d.rdzv_id, own)
        return dist.launch(argv, local=not d.rdzv_endpoint)
    ctx = None
    if dist.under_launcher():
        ctx = dist.init_from_env(cfg.device, d.timeout_s)
        cfg.device = ctx.device
        dist.setup_rank_logging(ctx, Path(d.log_dir).expanduser() if d.log_dir else Path(args.scene) / "logs")
    try:
        result = train(args.capture, args.scene, cfg, stages=args.stage, fresh=args.fresh)
    finally:
        dist.shutdown()
    if ctx is not None and not ctx.is_main:
        return 0
    if args.json:
        _print_json(result)
    else:
        print(f"scene written to {args.scene}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.run import evaluate

    result = evaluate(args.scene, protocol=args.protocol, capture=args.capture, labels=args.labels,
                      out_dir=args.out, device=args.device or "cpu")
    _print_json(result)  # the result is a nested record: JSON either way
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from .scene import load_scene

    scene = load_scene(args.scene)
    result = scene.engine.query(
        args.text, negatives=args.negatives or None, threshold=args.threshold,
        max_instances=args.max_instances, point_spacing=args.point_spacing,
    )
    data = result.to_json()
    if args.out is not None:
        from .query.export import export_result

        data["files"] = export_result(args.out, scene.index, result)
        if not args.no_highlight:
            from .viewer.highlight import write_highlights

            data["files"]["highlight"] = write_highlights(args.out / "highlight", scene, result, camera=args.camera,
                                                          negatives=args.negatives or None)
    if args.json:
        _print_json(data)
    else:
        found = data.get("instances", [])
        print(f"{len(found)} instance(s) for {args.text!r} (best score {data.get('best_score')})")
        for inst in found:
            print(f"  score {inst['score']:.3f} centroid {inst['centroid']} points {inst.get('num_points')}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from .viewer.server import serve

    return serve(args.scene, host=args.host, port=args.port, device=args.device, max_splats=args.max_splats)


def cmd_export(args: argparse.Namespace) -> int:
    from .scene import export_scene

    files = export_scene(args.scene, args.out)
    _print_json({"files": files})
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from .config import iter_fields, to_dict

    cfg = _config_from_args(args)
    if args.docs:
        for name, f, value, _ in iter_fields(cfg):
            print(f"{name} = {value!r}\n    {f.metadata.get('help', '')}")
    else:
        sys.stdout.write(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .ros.demo import main as demo_main

    return demo_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccl-lgs",
        description="CCL-LGS language Gaussian splatting: capture, train, query, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"ccl-lgs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="summarise a capture or dataset folder")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("import", help="convert COLMAP / nerfstudio / Blender / rosbag2 into a capture folder")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--format", default="auto",
                   choices=["auto", "capture", "nerfstudio", "blender", "colmap", "rosbag2"])
    p.add_argument("--background", default="white", choices=["white", "black"],
                   help="background composited under RGBA images (Blender)")
    p.add_argument("--max-frames", type=int, default=0)
    p.add_argument("--downscale", type=int, default=1)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("synth", help="write a procedural synthetic scene with ground truth")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--objects", type=int, default=6)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a semantic Gaussian scene: rgb -> priors -> codebook -> field")
    p.add_argument("capture", type=Path)
    p.add_argument("scene", type=Path)
    p.add_argument("--stage", default="all", choices=["all", "rgb", "priors", "field"],
                   help="run up to this stage (earlier stages are reused when cached)")
    p.add_argument("--fresh", action="store_true", help="ignore cached stages")
    p.add_argument("--json", action="store_true", help="print the result record as JSON")
    p.add_argument("--nproc", type=int, default=0, metavar="N",
                   help="run on N processes: starts torchrun itself (same as --set distributed.nproc=N); "
                        "under torchrun every rank runs this command and this is ignored")
    _add_config_args(p, preset_default="default")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained scene")
    p.add_argument("scene", type=Path)
    p.add_argument("--protocol", default="rgb", choices=["rgb", "synthetic", "lerf-ovs", "3d-ovs", "3d"],
                   help="rgb: PSNR/SSIM; synthetic: 2D+3D on synthetic GT; lerf-ovs (LangSplat's script) and "
                        "3d-ovs (LEGaussians'): 2D maps vs label folders; 3d: select Gaussians by text, "
                        "render the selection, IoU vs the LERF labels (--labels) or the synthetic GT")
    p.add_argument("--capture", type=Path, default=None, help="capture folder (default: the one it was trained on)")
    p.add_argument("--labels", type=Path, default=None, help="label folder (lerf-ovs / 3d-ovs / 3d)")
    p.add_argument("--out", type=Path, default=None, help="write renders / relevance maps here")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("query", help="text -> matching object instances (world frame)")
    p.add_argument("scene", type=Path)
    p.add_argument("text")
    p.add_argument("--negatives", nargs="*", default=[])
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--max-instances", type=int, default=None)
    p.add_argument("--point-spacing", type=float, default=None)
    p.add_argument("--out", type=Path, default=None,
                   help="write .ply clouds, 3DGS .ply, a PNG and highlight/ (photoreal renders) here")
    p.add_argument("--camera", type=int, default=None,
                   help="capture frame whose camera the highlight renders use (default: the one that sees the "
                        "answer best)")
    p.add_argument("--no-highlight", action="store_true", help="skip the photoreal highlight renders of --out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("view", help="browser viewer of the splats with live text queries (viser)")
    p.add_argument("scene", type=Path)
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1, this machine only; 0.0.0.0 exposes the page, "
                        "unauthenticated, to the network)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (the next free one when it is taken)")
    p.add_argument("--device", default="cpu", help="device of the text encoder")
    p.add_argument("--max-splats", type=int, default=ViewerConfig.max_splats,
                   help="draw at most this many Gaussians, the most visible ones (0 = all; default "
                        f"{ViewerConfig.max_splats}, viewer.max_splats); an answer's own are always drawn")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("export", help="export a trained scene as 3DGS .ply and a coloured point cloud")
    p.add_argument("scene", type=Path)
    p.add_argument("out", type=Path)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("config", help="print the effective configuration (or --docs for every field)")
    p.add_argument("--docs", action="store_true")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", help="the end-to-end demo (same as `make demo`)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc N` relaunches itself under torchrun
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"ccl-lgs: configuration error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as exc:
        if args.verbose:
            raise
        print(f"ccl-lgs {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
