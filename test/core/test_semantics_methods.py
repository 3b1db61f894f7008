"""The field methods behind one protocol: the config's choices are exactly the registered methods,
and each one answers the protocol (the pipeline never compares the method's name)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccl_lgs_ros.config import Config, iter_fields
from ccl_lgs_ros.priors.types import CCL_LEVELS, GAGS_LEVELS
from ccl_lgs_ros.semantics.field import gaussian_code_probs
from ccl_lgs_ros.semantics.methods import METHODS, field_method
from ccl_lgs_ros.semantics.methods.base import pixel_codes
from ccl_lgs_ros.semantics.model import MLPDecoder, SemanticField


def test_config_choices_are_the_registered_methods() -> None:
    spec = {name: f for name, f, _, _ in iter_fields()}["field.method"]
    assert sorted(spec.metadata["choices"]) == sorted(METHODS)


@pytest.mark.parametrize("name,levels", [("ccl", CCL_LEVELS), ("cgc", CCL_LEVELS), ("gags", GAGS_LEVELS)])
def test_each_method_names_its_priors_and_training_levels(name: str, levels: tuple[str, ...]) -> None:
    cfg = Config()
    cfg.field.method = name
    method = field_method(cfg)
    assert method.name == name and method.prior_levels(cfg) == levels
    trained = method.train_levels(cfg, list(levels))
    assert trained == (list(levels) if name == "gags" else list(cfg.field.levels))


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown field method 'xyz'"):
        field_method("xyz")


def _field(method: str) -> tuple[SemanticField, np.ndarray, np.ndarray]:
    """A small field of ``method`` with random arrays, its level, and some features ``[5, d_f]``."""
    rng = np.random.default_rng(0)
    d_f, nc, dim = 4, 6, 8
    unit = lambda a: (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    cb = unit(rng.normal(size=(nc, dim)))
    feats = rng.normal(size=(5, d_f)).astype(np.float32)
    dec = MLPDecoder(d_f, dim + 3 if method == "gags" else nc)  # gags: CLIP vector + granularity logits
    field = SemanticField(method=method, features={"lv": feats}, codebooks={"lv": cb},
                          decoders={} if method == "cgc" else {"lv": dec},
                          centroids={"lv": unit(rng.normal(size=(nc, d_f)))} if method == "cgc" else {},
                          temperature=0.25)  # fmt: skip
    return field, feats, cb


@pytest.mark.parametrize("name", ["ccl", "cgc", "gags"])
def test_each_method_decodes_features_to_codebook_logits(name: str) -> None:
    """The decoding lives in the method (field.npz records only its name): by hand per method."""
    field, feats, cb = _field(name)
    got = field_method(field.method).logits(field, "lv", torch.from_numpy(feats)).detach().numpy()
    w0, b0 = (field.decoders["lv"].net[0].weight.detach().numpy(), field.decoders["lv"].net[0].bias.detach().numpy()) \
        if name != "cgc" else (None, None)  # fmt: skip
    if name == "cgc":
        f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        want = f @ field.centroids["lv"].T / 0.25
    else:
        w2, b2 = field.decoders["lv"].net[2].weight.detach().numpy(), field.decoders["lv"].net[2].bias.detach().numpy()
        out = np.maximum(feats @ w0.T + b0, 0) @ w2.T + b2
        if name == "ccl":
            want = out
        else:  # gags: the first D outputs, normalised, against the codebook over the temperature
            vec = out[:, : cb.shape[1]]
            want = (vec / np.linalg.norm(vec, axis=1, keepdims=True)) @ cb.T / 0.25
    assert got.shape == (5, cb.shape[0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pixel_codes_are_the_methods_argmax() -> None:
    field, _, _ = _field("cgc")
    rendered = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 3, 2, 4)).astype(np.float32))
    cen = field.centroids["lv"]
    f = rendered.numpy() / np.linalg.norm(rendered.numpy(), axis=-1, keepdims=True)
    np.testing.assert_array_equal(pixel_codes(field_method("cgc"), field, "lv", rendered), (f @ cen.T).argmax(-1))


def test_gaussian_code_probs_follow_the_recorded_method(tmp_path) -> None:
    field, feats, _ = _field("cgc")
    field.save(tmp_path / "field.npz")
    probs = gaussian_code_probs(tmp_path / "field.npz")["lv"].astype(np.float32)
    logits = (feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ field.centroids["lv"].T / 0.25
    want = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, want / want.sum(1, keepdims=True), atol=2e-3)  # float16 storage
    field.method = "nope"
    field.save(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="unknown field method 'nope'"):
        gaussian_code_probs(tmp_path / "bad.npz")
