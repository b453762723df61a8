#!/usr/bin/env bash
# The machine's dead-man's switch, installed at boot by the understudy provider.
#
# It ends the job's work and the machine itself when the service has stopped renewing the
# job's lease (it touches the lease file over SSH) for UNDERSTUDY_LEASE_SECONDS, or when
# UNDERSTUDY_DEADLINE (unix seconds, the job's max_duration_seconds) has passed. Until the
# lease file exists, the lease counts from the watchdog's start.
#
# usage: understudy-watchdog exit|poweroff
#   exit      for containers (RunPod pods): stop the pod through runpodctl when the image has
#             it, then exit; run as the container's main process, its exit ends the pod.
#   poweroff  for virtual machines: shut the machine down.
#
# Environment: UNDERSTUDY_LEASE_FILE (required), UNDERSTUDY_LEASE_SECONDS (0: no lease),
# UNDERSTUDY_DEADLINE (0: none), UNDERSTUDY_WATCHDOG_INTERVAL (seconds between checks,
# default 15), UNDERSTUDY_STOP_GRACE (seconds the work gets to checkpoint, default 60).
set -u
action=${1:-poweroff}
lease_file=${UNDERSTUDY_LEASE_FILE:?UNDERSTUDY_LEASE_FILE is required}
lease_seconds=${UNDERSTUDY_LEASE_SECONDS:-0}
deadline=${UNDERSTUDY_DEADLINE:-0}
interval=${UNDERSTUDY_WATCHDOG_INTERVAL:-15}
grace=${UNDERSTUDY_STOP_GRACE:-60}
work_dir=$(dirname "$lease_file")
started=$(date +%s)

log() {
  local line
  line="understudy-watchdog: $(date -u +%Y-%m-%dT%H:%M:%SZ) $*"
  echo "$line" >&2
  if [ -d "$work_dir" ]; then echo "$line" >>"$work_dir/watchdog.log" 2>/dev/null || true; fi
}

log "watching $lease_file (lease ${lease_seconds}s, deadline ${deadline})"
reason=""
while :; do
  now=$(date +%s)
  last=$started
  if [ -e "$lease_file" ]; then
    last=$(stat -c %Y "$lease_file" 2>/dev/null || echo "$started")
  fi
  if [ "$lease_seconds" -gt 0 ] && [ $((now - last)) -ge "$lease_seconds" ]; then
    reason="lease expired: the service has not renewed it for ${lease_seconds}s"
    break
  fi
  if [ "$deadline" -gt 0 ] && [ "$now" -ge "$deadline" ]; then
    reason="deadline reached: the job's max_duration_seconds is over"
    break
  fi
  sleep "$interval"
done

log "$reason; stopping the job's work"
# The service's runner records the run's process group leader in <work dir>/pid. TERM lets
# the runtime write a checkpoint; KILL follows after the grace period.
if [ -s "$work_dir/pid" ]; then
  pid=$(cat "$work_dir/pid")
  if kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; then
    i=0
    while [ "$i" -lt "$grace" ] && kill -0 "$pid" 2>/dev/null; do
      sleep 1
      i=$((i + 1))
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
fi

case "$action" in
exit)
  if command -v runpodctl >/dev/null 2>&1 && [ -n "${RUNPOD_POD_ID:-}" ]; then
    log "stopping pod $RUNPOD_POD_ID"
    runpodctl stop pod "$RUNPOD_POD_ID" >/dev/null 2>&1 || log "runpodctl stop failed; exiting the main process"
  fi
  log "exiting"
  exit 0
  ;;
poweroff)
  log "powering off"
  shutdown -h now "understudy: $reason" 2>/dev/null || systemctl poweroff 2>/dev/null || poweroff -f
  ;;
*)
  log "unknown action $action; exiting"
  exit 2
  ;;
esac
