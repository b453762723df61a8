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

# All in one function, which bash reads whole before it runs.
main() {
  local self py key cache dir tmp start
  self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
  py=${PYTHON:-python3}
  command -v "$py" >/dev/null 2>&1 || { log "$py is not installed"; exit 1; }
  key=$({
    cat "$self"
    "$py" -c 'import sys; print(sys.version)'
  } | sha256sum | cut -c1-16)
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/understudy"
  dir="$cache/schemathesis-$key"

  if [ ! -f "$dir/.complete" ]; then
    mkdir -p "$cache"
    exec 9>"$dir.lock"
    flock 9
  fi
  if [ ! -f "$dir/.complete" ]; then
    start=$SECONDS
    # Under the lock, anything left here is from a run that was killed.
    rm -rf "$dir" "$dir".tmp.*
    tmp=$(mktemp -d "$dir.tmp.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"
    mkdir "$tmp/bin"

    log "installing schemathesis==$SCHEMATHESIS_VERSION"
    "$py" -m venv "$tmp/venv" >&2
    "$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
    printf '%s' "$WRAPPER" >"$tmp/bin/schemathesis"
    chmod +x "$tmp/bin/schemathesis"

    "$tmp/bin/schemathesis" --version >&2
    touch "$tmp/.complete"
    mv "$tmp" "$dir"
    trap - EXIT
    log "installed in $dir in $((SECONDS - start))s"
  fi
  echo "$dir"
}

main "$@"
