"""ccl_lgs: language-embedded 3D Gaussian splatting (CCL-LGS) for ROS 2 robots.

The package is a plain library (no rclpy) with a thin ROS 2 layer in :mod:`ccl_lgs_ros.ros`.
"""

__version__ = "0.1.0"
