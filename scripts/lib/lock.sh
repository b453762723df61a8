# Sourced by benchenv.sh and wheelhouse.sh. lock_pins LOCK [PACKAGE...] prints the pins of
# the lock file LOCK (name==version lines; comments and blank lines dropped), less the
# packages named, case-insensitively.
lock_pins() {
  local lock=$1 skip pin name
  shift
  skip=$(printf '%s\n' "$@" | tr 'A-Z' 'a-z')
  grep -v -E '^[[:space:]]*(#|$)' "$lock" | while IFS= read -r pin; do
    name=$(printf '%s' "${pin%%==*}" | tr 'A-Z' 'a-z')
    printf '%s\n' "$skip" | grep -qx -F -- "$name" || printf '%s\n' "$pin"
  done
}
