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
# Environment: UNDERSTUDY_CACHE, PYTHON (base interpreter, default python3).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "benchenv: $*" >&2; }

if [ "$(id -u)" = 0 ] && [ -z "${UNDERSTUDY_CACHE:-}" ]; then
  export UNDERSTUDY_CACHE=/var/cache/understudy
  (umask 022 && mkdir -p "$UNDERSTUDY_CACHE")
fi
reqs=("$root/trainer/requirements.txt" "$root/trainer/requirements-dev.txt" "$root/trainer/bench/requirements-bench.txt")
if command -v sha256sum >/dev/null 2>&1; then
  key=$(cat "${reqs[@]}" | sha256sum | cut -c1-16)
else
  key=$(cat "${reqs[@]}" | shasum -a 256 | cut -c1-16)
fi
cache="${UNDERSTUDY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/understudy}"
venv="$cache/benchenv-$key"

ready() { [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ]; }

if ! ready; then
  mkdir -p "$cache"
  # Two builds of the same environment must not run at once.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9
  fi
fi

if ! ready; then
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
  "$tmp/bin/python" -c 'import torch, transformers, peft, accelerate, trl, datasets, pytest' >&2
  # venvs hard-code their own path: rebuild the scripts for the final location.
  rm -rf "$venv"
  mv "$tmp" "$venv"
  sed -i "s#$tmp#$venv#g" "$venv"/bin/* 2>/dev/null || true
  touch "$venv/.complete"
fi
echo "$venv"
