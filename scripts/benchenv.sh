#!/usr/bin/env bash
# Creates (or reuses) the Python environment of the training benchmarks and prints its
# directory. It holds the runtime's pins (trainer/requirements.txt, requirements-dev.txt)
# plus the benchmark-only packages (trainer/bench/requirements-bench.txt: TRL and what it
# needs), in a venv of its own, without --system-site-packages: TRL must never reach the
# runtime's environment, whose cache key is the sha256 of the runtime's requirement files.
#
# Cached outside the clone like the runtime's (scripts/pyenv.sh, trainer/bootstrap.sh):
# ${UNDERSTUDY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/understudy}/benchenv-<key>, /var/cache/understudy
# as root, key = first 16 hex digits of sha256(requirements.txt, requirements-dev.txt,
# requirements-bench.txt), complete when it holds a .complete marker.
#
# On this machine's own PyTorch (UNDERSTUDY_TORCH_PYTHON=<an interpreter that imports
# torch>, as GPU images ship one): instead of downloading PyTorch and its CUDA libraries, a
# venv on that interpreter's Python holds trainer/bench/requirements-lock.txt (every pin
# above and all they need, PyTorch left out) and sees the interpreter's packages after its
# own, PyTorch among them: the pinned versions shadow whatever the machine has of them,
# except the packages UNDERSTUDY_MACHINE_PACKAGES names (default numpy, which the machine's
# PyTorch was built against), which stay the machine's where it has them. The
# packages come from PyPI, or with UNDERSTUDY_WHEELS=DIR from a wheelhouse that
# scripts/wheelhouse.sh made elsewhere, for a machine that cannot reach PyPI. Cached as
# benchenv-torch-<key>, key also covering the interpreter's Python and PyTorch versions.
#
# Environment: UNDERSTUDY_CACHE, PYTHON (base interpreter, default python3),
# UNDERSTUDY_TORCH_PYTHON, UNDERSTUDY_WHEELS, UNDERSTUDY_MACHINE_PACKAGES.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "benchenv: $*" >&2; }

if [ "$(id -u)" = 0 ] && [ -z "${UNDERSTUDY_CACHE:-}" ]; then
  export UNDERSTUDY_CACHE=/var/cache/understudy
  (umask 022 && mkdir -p "$UNDERSTUDY_CACHE")
fi
reqs=("$root/trainer/requirements.txt" "$root/trainer/requirements-dev.txt" "$root/trainer/bench/requirements-bench.txt")
lock="$root/trainer/bench/requirements-lock.txt"
torchpy=${UNDERSTUDY_TORCH_PYTHON:-}
name=benchenv
keyed=("${reqs[@]}")
extra=""
if [ -n "$torchpy" ]; then
  versions=$("$torchpy" -c 'import sys, torch; print(sys.version.split()[0], torch.__version__)' 2>/dev/null) || {
    log "UNDERSTUDY_TORCH_PYTHON=$torchpy cannot import torch"
    exit 2
  }
  name=benchenv-torch
  keyed=("$lock")
  extra="$torchpy $versions; machine's: ${UNDERSTUDY_MACHINE_PACKAGES-numpy}"
fi
if command -v sha256sum >/dev/null 2>&1; then
  key=$({ cat "${keyed[@]}"; [ -z "$extra" ] || echo "$extra"; } | sha256sum | cut -c1-16)
else
  key=$({ cat "${keyed[@]}"; [ -z "$extra" ] || echo "$extra"; } | shasum -a 256 | cut -c1-16)
fi
cache="${UNDERSTUDY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/understudy}"
venv="$cache/$name-$key"

ready() { [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ]; }

if ! ready; then
  mkdir -p "$cache"
  # Two builds of the same environment must not run at once.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9
  fi
fi

if ! ready && [ -n "$torchpy" ]; then
  tmp="$venv.tmp"
  rm -rf "$tmp"
  log "building $venv on the PyTorch of $torchpy ($versions)"
  # A venv of the interpreter's own Python (also when that interpreter is itself a venv's),
  # without pip: the interpreter's pip installs into it. A .pth file puts the directory
  # that holds the interpreter's torch after the venv's own packages. The packages must sit
  # inside the venv, not on PYTHONPATH: dill, which datasets hashes with, pickles by value
  # what lives outside the interpreter's prefix, and fails on pyarrow's types.
  "$torchpy" -m pip --version >/dev/null 2>&1 || {
    log "$torchpy has no pip, which installs the lock into the venv"
    exit 2
  }
  "$torchpy" -m venv --without-pip "$tmp" >&2
  purelib=$("$tmp/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$torchpy" -c 'import os, torch; print(os.path.dirname(os.path.dirname(os.path.realpath(torch.__file__))))' \
    >"$purelib/understudy-machine-torch.pth"
  keep=()
  for pkg in ${UNDERSTUDY_MACHINE_PACKAGES-numpy}; do
    if have=$("$torchpy" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$pkg" 2>/dev/null); then
      keep+=("$pkg")
      log "keeping the machine's $pkg $have"
    fi
  done
  # shellcheck source=lib/lock.sh
  . "$root/scripts/lib/lock.sh"
  lock_pins "$lock" "${keep[@]}" >"$tmp/requirements-lock.txt"
  src=()
  if [ -n "${UNDERSTUDY_WHEELS:-}" ]; then
    log "installing from the wheelhouse $UNDERSTUDY_WHEELS (no network)"
    src=(--no-index --find-links "$UNDERSTUDY_WHEELS")
  fi
  # --no-deps: the lock is the whole closure, and resolving it would pull PyTorch in again.
  "$torchpy" -m pip --python "$tmp/bin/python" install -q --disable-pip-version-check --no-deps \
    "${src[@]}" -r "$tmp/requirements-lock.txt" >&2
  # Every pin must be what the venv finds first, ahead of the machine's own.
  "$tmp/bin/python" - "$tmp/requirements-lock.txt" >&2 <<'PY'
import importlib.metadata as md, sys
bad = []
for line in open(sys.argv[1]):
    name, want = line.strip().split("==")
    try:
        got = md.version(name)
    except md.PackageNotFoundError:
        got = None
    if got != want:
        bad.append(f"{name}: found {got}, want {want}")
if bad:
    sys.exit("benchenv: not as pinned: " + "; ".join(bad))
import torch
print(f"benchenv: torch {torch.__version__} from {torch.__file__}")
PY
fi

if ! ready && [ -z "$torchpy" ]; then
  py=${PYTHON:-python3}
  tmp="$venv.tmp"
  rm -rf "$tmp"
  uv=$(command -v uv || true)
  if [ -z "$uv" ]; then
    # The runtime's environment carries uv when bootstrap.sh had to install it.
    runtime=$("$root/scripts/pyenv.sh")
    [ -x "$runtime/bin/uv" ] && uv="$runtime/bin/uv"
  fi
  args=()
  for r in "${reqs[@]}"; do args+=(-r "$r"); done
  if [ -n "$uv" ]; then
    log "building $venv with uv"
    "$uv" venv -q --python "$py" "$tmp" >&2
    "$uv" pip install -q --python "$tmp/bin/python" "${args[@]}" >&2
  else
    log "building $venv with pip"
    "$py" -m venv "$tmp" >&2
    "$tmp/bin/python" -m pip install -q --disable-pip-version-check "${args[@]}" >&2
  fi
fi

if ! ready; then
  "$tmp/bin/python" -c 'import torch, transformers, peft, accelerate, trl, datasets, pytest' >&2
  # venvs hard-code their own path: rebuild the scripts for the final location.
  rm -rf "$venv"
  mv "$tmp" "$venv"
  sed -i "s#$tmp#$venv#g" "$venv"/bin/* 2>/dev/null || true
  touch "$venv/.complete"
fi
echo "$venv"
