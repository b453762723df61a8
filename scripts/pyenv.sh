#!/usr/bin/env bash
# Creates (or reuses) the Python environment of the training runtime, cached outside the
# clone and keyed by the sha256 of the pinned requirements, and prints its directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
req="$root/trainer/requirements.txt"
dev="$root/trainer/requirements-dev.txt"
key=$(cat "$req" "$dev" | sha256sum | cut -c1-16)
cache="${UNDERSTUDY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/understudy}"
venv="$cache/pyenv-$key"
if [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ]; then
  echo "$venv"
  exit 0
fi
mkdir -p "$cache"
py=${PYTHON:-python3}
rm -rf "$venv.tmp"
"$py" -m venv "$venv.tmp" >&2
"$venv.tmp/bin/python" -m pip install -q --upgrade pip uv >&2
"$venv.tmp/bin/uv" pip install --python "$venv.tmp/bin/python" -r "$req" -r "$dev" >&2
# venvs hard-code their own path: rebuild the scripts for the final location.
rm -rf "$venv"
mv "$venv.tmp" "$venv"
sed -i "s#$venv.tmp#$venv#g" "$venv"/bin/* 2>/dev/null || true
touch "$venv/.complete"
echo "$venv"
