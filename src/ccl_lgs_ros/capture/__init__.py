"""Posed frames in: the capture folder format, importers and keyframe selection."""

from .format import Capture, CaptureError, Frame, Intrinsics

__all__ = ["Capture", "CaptureError", "Frame", "Intrinsics"]
