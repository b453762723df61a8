# Sourced by the scripts that install test tools outside the clone (emulators.sh,
# schemathesis.sh). cached_dir NAME KEY BUILD builds a directory once per key:
# ${XDG_CACHE_HOME:-$HOME/.cache}/understudy/NAME-KEY, made by the function BUILD in a
# temporary directory (its one argument) and renamed into place when complete, so a run that
# is interrupted leaves nothing half-made, and two runs at once wait for each other (flock).
# It prints the directory on stdout; BUILD must write only to stderr. The caller defines log.
cached_dir() {
  local name=$1 key=$2 build=$3 cache dir tmp start
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/understudy"
  dir="$cache/$name-$key"
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
    # shellcheck disable=SC2064 # the path is fixed now
    trap "rm -rf '$tmp'" EXIT
    chmod 755 "$tmp"
    mkdir "$tmp/bin"
    "$build" "$tmp"
    touch "$tmp/.complete"
    mv "$tmp" "$dir"
    trap - EXIT
    log "installed in $dir in $((SECONDS - start))s"
  fi
  echo "$dir"
}
