"""The field methods behind one protocol: the config's choices are exactly the registered methods,
and each one answers the protocol (the pipeline never compares the method's name)."""

from __future__ import annotations

import pytest

from ccl_lgs_ros.config import Config, iter_fields
from ccl_lgs_ros.priors.types import CCL_LEVELS, GAGS_LEVELS
from ccl_lgs_ros.semantics.methods import METHODS, field_method


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
