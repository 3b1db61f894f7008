"""Launch the ccl_lgs mapping node (capture -> train -> /semantic_query), optionally with RViz.

    ros2 launch ccl_lgs mapping.launch.py
    ros2 launch ccl_lgs mapping.launch.py pose_source:=topic pose_topic:=/odom device:=cpu rviz:=true
    ros2 launch ccl_lgs mapping.launch.py serve_only:=true initial_scene:=~/.ros/ccl_lgs/scenes/lab
    ros2 launch ccl_lgs mapping.launch.py viewer:=true     # browser viewer at http://127.0.0.1:8080

``rviz:=true`` on a machine without the ``rviz2`` package (a headless robot) logs a warning and
starts the mapping node alone, as an ordinary launch child.

Every node setting lives in the params file (default: the package's config/ccl_lgs.yaml, all
parameters with their defaults). The arguments below override single parameters; an argument
left empty keeps the params file's value.
"""

from __future__ import annotations

import os

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.logging import get_logger
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "ccl_lgs"

#: launch argument -> (ROS parameter it overrides, description). Empty default = params file.
OVERRIDES = {
    "image_topic": ("node.image_topic", "Colour image topic (sensor_msgs/Image or .../compressed)."),
    "camera_info_topic": ("node.camera_info_topic", "CameraInfo topic of the colour image."),
    "depth_topic": ("node.depth_topic", "Aligned depth image topic (16UC1 mm or 32FC1 m); empty = none."),
    "pose_source": ("node.pose_source", "'tf' (camera optical frame in fixed_frame via TF) or 'topic'."),
    "pose_topic": ("node.pose_topic", "Pose topic when pose_source is 'topic'."),
    "pose_topic_type": ("node.pose_topic_type", "PoseStamped, Odometry or TransformStamped."),
    "fixed_frame": ("node.fixed_frame", "The robot's fixed frame (map / odom); all outputs are in it."),
    "device": ("node.device", "Device of the training process: cuda, cuda:1 or cpu."),
    "capture_dir": ("node.capture_dir", "Capture folder the node writes keyframes into."),
    "scene_dir": ("node.scene_dir", "Folder trained scenes are written to."),
    "serve_only": ("node.serve_only", "true: do not capture, only serve a scene trained elsewhere."),
    "initial_scene": ("node.initial_scene", "Scene folder loaded at start (serve-only robots)."),
    "viewer": ("viewer.serve", "true: serve the browser viewer of the splats (viser) from the node."),
    "viewer_host": ("viewer.host", "Interface the viewer binds (params file default 127.0.0.1, this machine only)."),
    "viewer_port": ("viewer.port", "TCP port of the browser viewer."),
    "viewer_max_splats": ("viewer.max_splats", "Splats the viewer's page draws at most, the most visible (0 = all)."),
}


TRUE = ("1", "true", "yes", "on")


def _node(context, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - OpaqueFunction signature
    overrides = {}
    for arg, (param, _) in OVERRIDES.items():
        value = LaunchConfiguration(arg).perform(context).strip()
        if not value:
            continue
        if param in ("node.serve_only", "viewer.serve"):
            overrides[param] = value.lower() in TRUE
        elif param in ("viewer.port", "viewer.max_splats"):
            overrides[param] = int(value)
        else:
            overrides[param] = value
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() in TRUE
    profile = os.path.expanduser(LaunchConfiguration("fastdds_profile").perform(context).strip())
    # Fast DDS 2.x (Humble, Jazzy) and 3.x (Kilted) read different variable names; other RMWs ignore both.
    dds_env = {"FASTRTPS_DEFAULT_PROFILES_FILE": profile, "FASTDDS_DEFAULT_PROFILES_FILE": profile} if profile else {}
    return [
        Node(
            package=PACKAGE,
            executable="mapping_node",
            name="ccl_lgs_mapper",
            output="screen",
            emulate_tty=True,
            parameters=[LaunchConfiguration("params_file").perform(context), overrides, {"use_sim_time": use_sim_time}],
            additional_env=dds_env,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    args = [
        DeclareLaunchArgument(
            "params_file",
            default_value=os.path.join(share, "config", "ccl_lgs.yaml"),
            description="ROS 2 params file with every node parameter (default: the package's config/ccl_lgs.yaml).",
        ),
        *[
            DeclareLaunchArgument(name, default_value="", description=desc + " Empty = params file.")
            for name, (_, desc) in OVERRIDES.items()
        ],
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="Use /clock (true when replaying a bag with --clock)."
        ),
        DeclareLaunchArgument(
            "fastdds_profile",
            default_value=os.path.join(share, "config", "fastdds_large_data.xml"),
            description="Fast DDS profile of the node (default: 16 MB shared-memory segments, so multi-MB query "
            "answers reach clients on the same machine in a few ms; UDP kept for other machines). Empty = none.",
        ),
        DeclareLaunchArgument(
            "rviz",
            default_value="false",
            description="Also start RViz with config/ccl_lgs.rviz (without rviz2 installed: a warning, no RViz).",
        ),
        DeclareLaunchArgument(
            "rviz_config",
            default_value=os.path.join(share, "config", "ccl_lgs.rviz"),
            description="RViz configuration file.",
        ),
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_node), OpaqueFunction(function=_rviz)])


def _rviz(context, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - OpaqueFunction signature
    """RViz when asked for and installed. A plain ``Node(package="rviz2")`` fails the whole launch
    on a machine without rviz2 after the mapping node has started (which then ran on as an
    orphan); looking the package up here turns that into a warning."""
    if LaunchConfiguration("rviz").perform(context).strip().lower() not in TRUE:
        return []
    try:
        get_package_share_directory("rviz2")
    except PackageNotFoundError:
        get_logger("ccl_lgs").warning(
            "rviz:=true, but the rviz2 package is not installed on this machine (headless?): starting the "
            "mapping node without RViz. Install ros-$ROS_DISTRO-rviz2, run RViz on another machine on the "
            "same ROS network, or draw the topics offscreen: ros2 run ccl_lgs rviz_preview snapshot.png"
        )
        return []
    return [
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", LaunchConfiguration("rviz_config").perform(context)],
            output="screen",
        )
    ]
