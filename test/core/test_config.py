"""The one config tree: defaults, presets, YAML, overrides, validation."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from ccl_lgs_ros.config import (
    PRESETS,
    Config,
    ConfigError,
    from_dict,
    iter_fields,
    load_config,
    parse_assignments,
    set_value,
    to_dict,
)


def test_every_field_is_documented():
    for name, f, _, _ in iter_fields():
        assert f.metadata.get("help"), f"{name} has no help text"


def test_presets_only_name_existing_fields():
    for preset, overrides in PRESETS.items():
        cfg = load_config(preset=preset)
        for key, value in overrides.items():
            section, _, leaf = key.rpartition(".")
            target = getattr(cfg, section) if section else cfg
            assert getattr(target, leaf) == value, (preset, key)


def test_yaml_nested_flat_and_ros_params(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text(yaml.safe_dump({"rgb": {"iterations": 12}, "query": {"threshold": 0.25}}))
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump({"rgb.iterations": 13}))
    ros = tmp_path / "ros.yaml"
    ros.write_text(yaml.safe_dump({"mapping_node": {"ros__parameters": {"rgb": {"iterations": 14}}}}))
    assert load_config(nested).rgb.iterations == 12
    assert load_config(nested).query.threshold == 0.25
    assert load_config(flat).rgb.iterations == 13
    assert load_config(ros).rgb.iterations == 14
    # precedence: defaults <- preset <- yaml <- overrides
    cfg = load_config(nested, preset="tiny", overrides={"rgb.iterations": "99"})
    assert cfg.rgb.iterations == 99
    assert cfg.field.codebook_size == PRESETS["tiny"]["field.codebook_size"]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("rgb.iterations", "many", "integer"),
        ("rgb.iterations", -1, "minimum"),
        ("query.threshold", float("nan"), "NaN"),
        ("query.threshold", 1.5, "maximum"),
        ("rgb.backend", "opengl", "not one of"),
        ("nosuch.field", 1, "unknown"),
        ("rgb.nosuch", 1, "unknown"),
        ("rgb.densify", "maybe", "boolean"),
    ],
)
def test_bad_values_are_rejected_with_a_reason(key, value, reason):
    with pytest.raises(ConfigError, match=reason):
        set_value(Config(), key, value)


def test_string_coercion_for_cli_and_ros():
    cfg = Config()
    set_value(cfg, "rgb.densify", "false")
    set_value(cfg, "field.levels", "sp, wp")
    set_value(cfg, "query.negatives", "[object, stuff]")
    assert cfg.rgb.densify is False
    assert cfg.field.levels == ["sp", "wp"]
    assert cfg.query.negatives == ["object", "stuff"]
    assert parse_assignments(["a.b=c=d"]) == {"a.b": "c=d"}
    with pytest.raises(ConfigError):
        parse_assignments(["novalue"])


def test_dict_round_trip_and_list_defaults_are_not_shared():
    cfg = load_config(preset="fast")
    assert dataclasses.asdict(from_dict(to_dict(cfg))) == dataclasses.asdict(cfg)
    a, b = Config(), Config()
    a.query.negatives.append("x")
    assert "x" not in b.query.negatives
