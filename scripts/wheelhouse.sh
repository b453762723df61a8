#!/usr/bin/env bash
# Downloads the wheels of trainer/bench/requirements-lock.txt (everything the runtime and
# its benchmarks import, PyTorch left out) for Linux x86_64 and one Python version into DIR,
# so that scripts/benchenv.sh (UNDERSTUDY_TORCH_PYTHON=..., UNDERSTUDY_WHEELS=DIR) can install
# them on a GPU machine that has PyTorch but cannot reach PyPI.
#
#   scripts/wheelhouse.sh DIR [PYTHON_VERSION [PACKAGE...]]     (default 3.12)
#
# Name packages after the version to leave them out where the target machine has versions
# that will do; list them in UNDERSTUDY_MACHINE_PACKAGES there too, so that benchenv.sh
# leaves them to the machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: scripts/wheelhouse.sh DIR [PYTHON_VERSION [PACKAGE...]]" >&2; exit 2; }
dir=$1
ver=${2:-3.12}
shift $(( $# >= 2 ? 2 : 1 ))
lock="$root/trainer/bench/requirements-lock.txt"
# shellcheck source=lib/lock.sh
. "$root/scripts/lib/lock.sh"
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
lock_pins "$lock" "$@" >"$reqs"
# pip matches a platform tag exactly: offer every manylinux a current x86_64 machine runs.
platforms=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for n in $(seq 5 39); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
mkdir -p "$dir"
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --implementation cp --python-version "$ver" "${platforms[@]}" -d "$dir" -r "$reqs"
echo "wheelhouse: $(ls "$dir" | wc -l) wheels, $(du -sh "$dir" | cut -f1), for Python $ver in $dir" >&2
