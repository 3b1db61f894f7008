"""ament_python package ``ccl_lgs``; Python code lives in ``src/ccl_lgs_ros``."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ccl_lgs"

setup(
    name=PACKAGE,
    version="0.1.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="ccl_lgs maintainers",
    description="CCL-LGS language Gaussian splatting perception for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "ccl-lgs = ccl_lgs_ros.cli:main",
            "mapping_node = ccl_lgs_ros.ros.mapping_node:main",
            "replay = ccl_lgs_ros.ros.replay_node:main",
            "rviz_preview = ccl_lgs_ros.ros.rviz_preview:main",
        ],
    },
)
