"""Rewrite include dirs hard-coded by the ROS 2 wheels' exported CMake files.

Some message wheels were built on a machine whose Python lived in ``/opt/python/cp311-cp311``;
their exported ``*.cmake`` files name that interpreter's include dir and numpy's. Point them at
this interpreter's. Safe to run repeatedly (only rewrites files that still name the old paths).
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy

OLD_NUMPY = re.compile(r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include")
OLD_PY = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")


def main(venv: str) -> int:
    py_inc = sysconfig.get_paths()["include"]
    np_inc = numpy.get_include()
    changed = 0
    for path in Path(venv, "share").rglob("*.cmake"):
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        new = OLD_PY.sub(py_inc, OLD_NUMPY.sub(np_inc, text))
        if new != text:
            path.write_text(new)
            changed += 1
    print(f"[setup] patched {changed} CMake file(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else sys.prefix))
