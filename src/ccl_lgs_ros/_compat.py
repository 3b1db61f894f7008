"""Imports that need care on some machines."""

from __future__ import annotations

import ctypes
import ctypes.util
from types import ModuleType


def import_open3d() -> ModuleType:
    """Import open3d, preloading ``libusb-1.0`` from the ``libusb-package`` wheel when the
    system has none (open3d links against it; bare Debian images lack it)."""
    if ctypes.util.find_library("usb-1.0") is None:
        try:
            import libusb_package

            path = libusb_package.get_library_path()
            if path is not None:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except ImportError:
            pass
    import open3d

    return open3d
