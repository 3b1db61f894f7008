#!/usr/bin/env bash
# Lint, then the whole test suite. ROS 2 tests run inside a private network namespace
# (`unshare -n`, loopback up) where the machine allows it, so no DDS packet can leave the
# machine; every ROS test additionally sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, its own
# ROS_DOMAIN_ID and a temporary ROS_LOG_DIR (test/ros/conftest.py).
# Extra arguments go to pytest (e.g. -m "not slow", -k query).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
VENV=${CCL_LGS_VENV:-$ROOT/.venv}
PY="$VENV/bin/python"
export AMENT_PREFIX_PATH="$VENV"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export PYTHONUNBUFFERED=1
export MPLBACKEND=Agg

start=$(date +%s)
echo "== lint: ruff"
"$PY" -m ruff check src test bench scripts launch || exit 1
echo "== lint: import layers (import-linter, contracts in pyproject.toml)"
PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" "$VENV/bin/lint-imports" --no-cache || exit 1
echo "== lint: mypy (the whole package, ros/ included)"
"$PY" -m mypy src/ccl_lgs_ros || exit 1

echo "== tests"
PYTEST=("$PY" -m pytest -p no:cacheprovider "$@")
if unshare -n true 2>/dev/null; then
  echo "running the tests in a private network namespace (unshare -n, loopback only)"
  # Quote every argument for the inner shell.
  printf -v CMD '%q ' "${PYTEST[@]}"
  unshare -n sh -c "ip link set lo up && exec $CMD"
  rc=$?
else
  echo "WARNING: unshare -n is refused on this machine; ROS tests rely on"
  echo "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and private domain ids alone"
  "${PYTEST[@]}"
  rc=$?
fi
echo "== make test finished in $(( $(date +%s) - start )) s (rc=$rc)"
exit $rc
