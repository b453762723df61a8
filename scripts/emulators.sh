#!/usr/bin/env bash
# Installs (or reuses) the object-storage emulators the tests run against, cached outside the
# clone, and prints the cache directory on stdout (everything else goes to stderr):
#
#   bin/moto_server      S3: moto's server (PyPI moto[server]), in a venv of its own
#   bin/fake-gcs-server  GCS: fsouza/fake-gcs-server, built from the Go module proxy
#   bin/azurite-blob     Azure Blob Storage: Azurite's blob service (npm; runs on Node 20)
#
# Only package registries are used (PyPI, the Go module proxy, npm). The directory is
# ${XDG_CACHE_HOME:-$HOME/.cache}/understudy/emulators-<key>, key = first 16 hex digits of the
# sha256 of this script (which holds the pins) and the Python and Node versions; it is built in
# a temporary directory and renamed into place when complete, so a run that is interrupted
# leaves nothing half-made, and two runs at once wait for each other (flock).
# internal/emulators starts the binaries from $UNDERSTUDY_EMULATORS, which `make test` sets to
# what this prints.
set -euo pipefail

MOTO_VERSION=5.2.5
FAKE_GCS_SERVER_VERSION=v1.52.3
AZURITE_VERSION=3.37.0

log() { echo "emulators: $*" >&2; }

# A venv's own scripts name its absolute path in their #! line, which the rename would
# break; the interpreter finds its venv from where it is, so the wrappers run modules and
# files relative to themselves.
MOTO_WRAPPER='#!/bin/sh
exec "$(dirname "$0")/../moto/bin/python" -m moto.server "$@"
'
AZURITE_WRAPPER='#!/bin/sh
exec node "$(dirname "$0")/../azurite/node_modules/azurite/dist/src/blob/main.js" "$@"
'

# All in functions, which bash reads whole before it runs: editing this file while it runs
# cannot change what runs.
build() {
  local tmp=$1
  log "installing moto[server]==$MOTO_VERSION"
  "$py" -m venv "$tmp/moto" >&2
  "$tmp/moto/bin/python" -m pip install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
  printf '%s' "$MOTO_WRAPPER" >"$tmp/bin/moto_server"

  log "installing fake-gcs-server@$FAKE_GCS_SERVER_VERSION"
  GOBIN="$tmp/bin" GOFLAGS=-buildvcs=false GOWORK=off \
    go install "github.com/fsouza/fake-gcs-server@$FAKE_GCS_SERVER_VERSION" >&2

  log "installing azurite@$AZURITE_VERSION"
  # Azurite 3.37 declares node >= 22 but runs on Node 20 (the tests prove it): allow it.
  npm install --prefix "$tmp/azurite" --no-audit --no-fund --loglevel=error --engine-strict=false \
    "azurite@$AZURITE_VERSION" >&2
  printf '%s' "$AZURITE_WRAPPER" >"$tmp/bin/azurite-blob"
  chmod +x "$tmp/bin/moto_server" "$tmp/bin/azurite-blob"

  "$tmp/bin/moto_server" --help >/dev/null
  "$tmp/bin/azurite-blob" --help >/dev/null
  [ -x "$tmp/bin/fake-gcs-server" ]
}

main() {
  local here key
  here="$(cd "$(dirname "$0")" && pwd)"
  # shellcheck source=lib/cached.sh
  . "$here/lib/cached.sh"
  py=${PYTHON:-python3}
  for tool in "$py" node npm go; do
    command -v "$tool" >/dev/null 2>&1 || { log "$tool is not installed"; exit 1; }
  done
  key=$({
    cat "$here/$(basename "$0")" "$here/lib/cached.sh"
    "$py" -c 'import sys; print(sys.version)'
    node --version
  } | sha256sum | cut -c1-16)
  cached_dir emulators "$key" build
}

main "$@"
