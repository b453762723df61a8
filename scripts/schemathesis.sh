#!/usr/bin/env bash
# Installs (or reuses) schemathesis, the property-based API fuzzer that e2e/openapi_fuzz_test.go
# runs against the live service, cached outside the clone, and prints the cache directory on
# stdout (everything else goes to stderr); the fuzzer is bin/schemathesis under it.
#
# Only PyPI is used. The directory is ${XDG_CACHE_HOME:-$HOME/.cache}/understudy/schemathesis-<key>,
# key = first 16 hex digits of the sha256 of this script (which holds the pin) and the Python
# version; it is built in a temporary directory and renamed into place when complete, so a run
# that is interrupted leaves nothing half-made, and two runs at once wait for each other
# (flock). `make test` sets UNDERSTUDY_SCHEMATHESIS to what this prints.
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5

log() { echo "schemathesis: $*" >&2; }

# A venv's own scripts name its absolute path in their #! line, which the rename would
# break; the wrapper runs the module with the venv's interpreter, found relative to itself.
WRAPPER='#!/bin/sh
exec "$(dirname "$0")/../venv/bin/python" -m schemathesis.cli "$@"
'

# All in functions, which bash reads whole before it runs.
build() {
  local tmp=$1
  log "installing schemathesis==$SCHEMATHESIS_VERSION"
  "$py" -m venv "$tmp/venv" >&2
  "$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
  printf '%s' "$WRAPPER" >"$tmp/bin/schemathesis"
  chmod +x "$tmp/bin/schemathesis"
  "$tmp/bin/schemathesis" --version >&2
}

main() {
  local here key
  here="$(cd "$(dirname "$0")" && pwd)"
  # shellcheck source=lib/cached.sh
  . "$here/lib/cached.sh"
  py=${PYTHON:-python3}
  command -v "$py" >/dev/null 2>&1 || { log "$py is not installed"; exit 1; }
  key=$({
    cat "$here/$(basename "$0")" "$here/lib/cached.sh"
    "$py" -c 'import sys; print(sys.version)'
  } | sha256sum | cut -c1-16)
  cached_dir schemathesis "$key" build
}

main "$@"
