#!/usr/bin/env bash
# Creates (or reuses) the Python environment of the training runtime, cached outside the
# clone and keyed by the sha256 of the pinned requirements, and prints its directory.
# trainer/bootstrap.sh does the work (GPU machines run the same script and find the same
# cache); here the pinned PyTorch is always installed, never an image's, so tests run
# against the pins.
set -euo pipefail
# As root, the environment is kept where the unprivileged user that local jobs run as can
# read it (root's home is closed to it).
if [ "$(id -u)" = 0 ] && [ -z "${UNDERSTUDY_CACHE:-}" ]; then
  export UNDERSTUDY_CACHE=/var/cache/understudy
  (umask 022 && mkdir -p "$UNDERSTUDY_CACHE")
fi
root=$(cd "$(dirname "$0")/.." && pwd)
py=$(env -u UNDERSTUDY_PYTHON UNDERSTUDY_SYSTEM_TORCH=0 UNDERSTUDY_SKIP_GPU_CHECK=1 \
  "$root/trainer/bootstrap.sh" | tail -n 1)
echo "${py%/bin/python}"
