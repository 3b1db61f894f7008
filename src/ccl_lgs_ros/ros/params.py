"""ROS parameters derived from the config tree (:mod:`ccl_lgs_ros.config`).

Every leaf ``section.field`` of :class:`~ccl_lgs_ros.config.Config` becomes a ROS parameter of
the same name, declared with a :class:`ParameterDescriptor` (type, the field's help text, the
allowed choices, integer/float ranges). Values from a params file (``--ros-args --params-file``)
override the defaults at declaration. Every later change goes through
:func:`ccl_lgs_ros.config.set_value` in an on-set callback: a bad value is rejected with the
reason, and the node's config object is only changed for accepted values.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any, cast

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from ..config import Config, ConfigError, iter_fields, set_value

#: Parameters that only take effect at start (topics, pose source, mode): read-only afterwards.
READ_ONLY = {
    "node.image_topic",
    "node.camera_info_topic",
    "node.depth_topic",
    "node.pose_source",
    "node.pose_topic",
    "node.pose_topic_type",
    "node.serve_only",
    "node.sensor_qos",
    "node.fixed_frame",
    # Where the node may read and write: only the operator's params file sets these, never a
    # caller's set_parameters (which would widen the allowed roots for itself).
    "node.allowed_roots",
    "node.checkpoint_dirs",
    "node.capture_dir",
    "node.scene_dir",
    "node.initial_scene",
    "viewer.serve",
    "viewer.host",
    "viewer.port",
    "viewer.max_splats",
    "node.query_queue_depth",
    "node.max_queries_in_flight",
    "node.query_executor",
}

_INT_MAX = 2**63 - 1


def _param_type(value: Any, typ: Any) -> int:
    if typ is bool:
        return ParameterType.PARAMETER_BOOL
    if typ is int:
        return ParameterType.PARAMETER_INTEGER
    if typ is float:
        return ParameterType.PARAMETER_DOUBLE
    if typ is str:
        return ParameterType.PARAMETER_STRING
    if isinstance(value, list):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return ParameterType.PARAMETER_DOUBLE_ARRAY
        return ParameterType.PARAMETER_STRING_ARRAY
    raise TypeError(f"no ROS parameter type for {typ}")


def descriptors(cfg: Config | None = None) -> list[tuple[str, Any, ParameterDescriptor]]:
    """``(name, default value, descriptor)`` for every config field."""
    out = []
    for name, f, value, typ in iter_fields(cfg):
        ptype = _param_type(value, typ)
        meta = f.metadata
        desc = ParameterDescriptor(
            name=name,
            type=ptype,
            description=str(meta.get("help", "")),
            read_only=name in READ_ONLY,
            dynamic_typing=False,
        )
        if "choices" in meta:
            desc.additional_constraints = "one of: " + ", ".join(str(c) for c in meta["choices"])
        lo, hi = meta.get("min"), meta.get("max")
        if ptype == ParameterType.PARAMETER_INTEGER and (lo is not None or hi is not None):
            desc.integer_range = [
                IntegerRange(
                    from_value=int(lo) if lo is not None else -_INT_MAX,
                    to_value=int(hi) if hi is not None else _INT_MAX,
                    step=0,
                )
            ]
        elif ptype == ParameterType.PARAMETER_DOUBLE and (lo is not None or hi is not None):
            desc.floating_point_range = [
                FloatingPointRange(
                    from_value=float(lo) if lo is not None else -math.inf,
                    to_value=float(hi) if hi is not None else math.inf,
                    step=0.0,
                )
            ]
        if ptype == ParameterType.PARAMETER_DOUBLE_ARRAY:
            value = [float(v) for v in value]
        out.append((name, value, desc))
    return out


def validate_node_value(name: str, value: Any) -> str | None:
    """Extra checks the config tree cannot express; the reason, or ``None`` when fine."""
    if name == "node.camera_in_body":
        from ..capture.pose_sync import check_pose

        vals = list(value)
        if len(vals) != 7:
            return f"{name}: expected x y z qx qy qz qw (7 numbers), got {len(vals)}"
        return check_pose(vals[:3], vals[3:])
    if name in ("node.image_topic", "node.camera_info_topic", "node.pose_topic") and not str(value).strip():
        return f"{name}: must not be empty"
    return None


class ConfigParameters:
    """Declares the config tree on ``node`` and keeps ``self.cfg`` in sync with accepted values.

    Args:
        node: the node.
        on_change: called with ``(name, value)`` after a runtime change was accepted.
    """

    def __init__(self, node: Node, on_change: Callable[[str, Any], None] | None = None) -> None:
        self.node = node
        self.cfg = Config()
        self.on_change = on_change
        self._declaring = True
        self.names = frozenset(name for name, *_ in iter_fields(self.cfg))
        # A params file's empty list (``checkpoint_dirs: []``) reaches rclpy as no value.
        self._lists = frozenset(name for name, _, value, _ in iter_fields(self.cfg) if isinstance(value, list))
        node.add_on_set_parameters_callback(self._on_set)
        # rclpy types the list invariantly as a union of tuple shapes; ours all have three items.
        declared = node.declare_parameters("", cast(Any, descriptors(self.cfg)))
        self._declaring = False
        # Overrides from a params file were validated in _on_set; apply them all now.
        for p in declared:
            set_value(self.cfg, p.name, self._value(p))

    def _on_set(self, params: Iterable[Parameter]) -> SetParametersResult:
        candidate = copy.deepcopy(self.cfg)
        known = self.names
        for p in params:
            if p.name not in known:
                continue  # use_sim_time and other ROS parameters
            value = self._value(p)
            try:
                set_value(candidate, p.name, value)
            except ConfigError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            reason = validate_node_value(p.name, value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        if not self._declaring:
            for p in params:
                if p.name in known:
                    set_value(self.cfg, p.name, self._value(p))
                    if self.on_change is not None:
                        self.on_change(p.name, self._value(p))
        return SetParametersResult(successful=True)

    def _value(self, p: Parameter) -> Any:
        value = _plain(p.value)
        return [] if value is None and p.name in self._lists else value


def _plain(value: Any) -> Any:
    """rclpy array values (array.array, tuples) -> plain lists."""
    if isinstance(value, (str, bytes, bool, int, float)) or value is None:
        return value
    try:
        return list(value)
    except TypeError:
        return value


__all__ = ["READ_ONLY", "ConfigParameters", "descriptors", "validate_node_value"]
