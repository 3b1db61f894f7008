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
