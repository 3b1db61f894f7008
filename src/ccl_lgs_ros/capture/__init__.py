"""Posed frames in: the capture folder format, importers and keyframe selection.

- :mod:`.format`: the capture folder (``Capture``, ``Frame``, ``Intrinsics``).
- :mod:`.image_codec`: ROS-free ``sensor_msgs/Image`` / ``CompressedImage`` decoding.
- :mod:`.pose_sync`: pose interpolation, offline TF, image/depth pairing, optical -> OpenGL.
- :mod:`.keyframes`, :mod:`.writer`, :mod:`.session`: keyframe selection and crash-safe writing,
  shared by the live node and the bag importer.
- :mod:`.importers`: ``import_capture`` / ``capture_info`` (COLMAP, nerfstudio, Blender, rosbag2).
"""

from .format import Capture, CaptureError, Frame, Intrinsics
from .importers import CaptureImportError, capture_info, detect_format, import_capture
from .keyframes import KeyframeSelector
from .pose_sync import PoseBuffer, camera_c2w_gl
from .session import CaptureSession
from .writer import CaptureWriteError, CaptureWriter

__all__ = [
    "Capture",
    "CaptureError",
    "CaptureImportError",
    "CaptureSession",
    "CaptureWriteError",
    "CaptureWriter",
    "Frame",
    "Intrinsics",
    "KeyframeSelector",
    "PoseBuffer",
    "camera_c2w_gl",
    "capture_info",
    "detect_format",
    "import_capture",
]
