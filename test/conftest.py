"""Shared fixtures. Tests run on CPU; GPU tests skip with a reason without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def dataset_path(name: str) -> Path:
    """Path of a shared real dataset, or skip the test with the reason."""
    path = Path(os.environ.get("CCL_LGS_DATASETS", SHARED_DATASETS)) / name
    if not path.is_dir():
        pytest.skip(f"dataset {name!r} not found at {path} (see ../shared/datasets/README.md)")
    return path


def pytest_collection_modifyitems(config, items):  # noqa: ANN001 - pytest hook signature
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def trained_scene(tmp_path_factory):
    """A small scene trained for real, once per session: ``ccl-lgs synth`` (3 objects, 8 frames
    of 64x48) then ``ccl-lgs train --preset tiny`` with the simulator priors and short stages
    (about 15 s on 2 cores). Returns ``(scene_dir, capture_dir)``; tests must not modify them."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("trained_scene")
    cap, scene = root / "capture", root / "scene"

    def cli(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "ccl_lgs_ros", *args], check=True, capture_output=True, timeout=600)

    cli("synth", str(cap), "--seed", "1", "--width", "64", "--height", "48", "--frames", "8", "--objects", "3")
    cli("train", str(cap), str(scene), "--preset", "tiny", "--set", "priors.backend=simulator",
        "--set", "rgb.iterations=60", "--set", "field.iterations=60", "--set", "field.codebook_iterations=60")
    return scene, cap
