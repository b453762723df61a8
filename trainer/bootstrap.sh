#!/usr/bin/env bash
# Prepares the Python environment of the training runtime and prints, as its last line on
# stdout, the interpreter to run it with. Everything else goes to stderr.
#
# Order of preference:
#   1. $UNDERSTUDY_PYTHON, when set and it imports torch;
#   2. a cached environment a previous job (or scripts/pyenv.sh) built from the same pinned
#      requirements: ${UNDERSTUDY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/understudy}/pyenv-<key>,
#      key = first 16 hex digits of sha256(requirements.txt then requirements-dev.txt),
#      complete when it holds a .complete marker;
#   3. a new one: on images that ship PyTorch (Python >= 3.11, torch >= 2.4) a venv with
#      --system-site-packages where only the other packages are installed; otherwise a venv
#      with every pin installed by uv (pip when uv cannot be had).
#
# Environment: UNDERSTUDY_PYTHON, UNDERSTUDY_CACHE, PYTHON (base interpreter, default python3),
# UNDERSTUDY_SYSTEM_TORCH (auto | 0: never reuse the image's PyTorch),
# UNDERSTUDY_SKIP_GPU_CHECK=1 (skip the nvidia-smi / torch.cuda check).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "bootstrap: $*" >&2; }
# uv trusts the system's certificate store, as pip and curl do, not only the roots it was
# built with: a machine whose network inspects TLS under a CA installed on it builds too.
# A uv too old to know this setting, and any other failure of uv, falls back to pip.
export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-1}"

check_gpu() {
  [ "${UNDERSTUDY_SKIP_GPU_CHECK:-0}" = 1 ] && return 0
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    log "no nvidia-smi: no NVIDIA GPU here, training will run on the CPU"
    return 0
  fi
  nvidia-smi -L >&2 || log "warning: nvidia-smi failed"
  "$1" - >&2 <<'PY' || log "warning: PyTorch cannot use the GPU; training would run on the CPU"
import sys, torch
ok = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs usable: {torch.cuda.device_count() if ok else 0}")
sys.exit(0 if ok else 3)
PY
}

if [ -n "${UNDERSTUDY_PYTHON:-}" ] && "$UNDERSTUDY_PYTHON" -c 'import torch' >/dev/null 2>&1; then
  log "using UNDERSTUDY_PYTHON=$UNDERSTUDY_PYTHON"
  check_gpu "$UNDERSTUDY_PYTHON"
  echo "$UNDERSTUDY_PYTHON"
  exit 0
fi

req="$here/requirements.txt"
dev="$here/requirements-dev.txt"
if command -v sha256sum >/dev/null 2>&1; then
  key=$(cat "$req" "$dev" | sha256sum | cut -c1-16)
else
  key=$(cat "$req" "$dev" | shasum -a 256 | cut -c1-16)
fi
cache="${UNDERSTUDY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/understudy}"
venv="$cache/pyenv-$key"

ready() { [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ]; }

if ! ready; then
  mkdir -p "$cache"
  # Two jobs on one machine must not build the same environment at once.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9
  fi
fi

if ! ready; then
  py=${PYTHON:-python3}
  tmp="$venv.tmp"
  rm -rf "$tmp"
  built=""
  if [ "${UNDERSTUDY_SYSTEM_TORCH:-auto}" != 0 ] && "$py" - >/dev/null 2>&1 <<'PY'
import sys, torch
v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(0 if v >= (2, 4) and sys.version_info >= (3, 11) else 1)
PY
  then
    log "reusing the image's PyTorch ($("$py" -c 'import torch; print(torch.__version__)'))"
    if "$py" -m venv --system-site-packages "$tmp" >&2 &&
      grep -v -E '^[[:space:]]*torch([=<>!~ ;[]|$)' "$req" >"$tmp/requirements-runtime.txt" &&
      "$tmp/bin/python" -m pip install -q --disable-pip-version-check -r "$tmp/requirements-runtime.txt" -r "$dev" >&2; then
      built="system-torch"
    else
      log "installing next to the image's PyTorch failed; building a fully pinned environment"
      rm -rf "$tmp"
    fi
  fi
  if [ -z "$built" ]; then
    pip_install() { "$tmp/bin/python" -m pip install -q --disable-pip-version-check -r "$req" -r "$dev" >&2; }
    if command -v uv >/dev/null 2>&1; then
      log "building $venv with uv"
      uv venv -q --python "$py" --seed "$tmp" >&2
      if ! uv pip install -q --python "$tmp/bin/python" -r "$req" -r "$dev" >&2; then
        log "uv could not install the pins; installing them with pip"
        pip_install
      fi
    else
      log "building $venv with pip"
      "$py" -m venv "$tmp" >&2
      if ! { "$tmp/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip uv >&2 &&
        "$tmp/bin/uv" pip install --python "$tmp/bin/python" -r "$req" -r "$dev" >&2; }; then
        log "uv could not install the pins; installing them with pip"
        pip_install
      fi
    fi
    built="pinned"
  fi
  "$tmp/bin/python" -c 'import torch, transformers, tokenizers, safetensors, peft, accelerate' >&2
  echo "$built" >"$tmp/.kind"
  # venvs hard-code their own path: rebuild the scripts for the final location.
  rm -rf "$venv"
  mv "$tmp" "$venv"
  sed -i "s#$tmp#$venv#g" "$venv"/bin/* 2>/dev/null || true
  touch "$venv/.complete"
fi

check_gpu "$venv/bin/python"
echo "$venv/bin/python"
