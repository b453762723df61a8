#!/usr/bin/env bash
# Runs the training runtime inside one job directory on the training machine. The service
# uploads this runtime to <job dir>/runtime, the dataset to <job dir>/data/train.jsonl and
# job.env (0600: model, hyperparameters, the completion callback), then starts this script
# detached. Its stdout is the progress stream (docs/progress-protocol.md).
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
[ -f job.env ] && . ./job.env
# A job's user may have no home of its own (the local provider's unprivileged user): the
# caches of Python, PyTorch and Hugging Face then go to the job directory.
if [ -z "${HOME:-}" ] || [ ! -d "$HOME" ] || [ ! -w "$HOME" ]; then
  mkdir -p home && HOME=$PWD/home && export HOME
fi

emit_error() {
  printf '{"v":1,"event":"error","time":%s,"code":"%s","message":"%s"}\n' "$(date +%s.%N)" "$1" "$2"
}

# The service stops a run with SIGTERM to its whole process group: the runtime writes a
# checkpoint and exits 75. This script must outlive it, so that its own exit (the run's
# exit_code) comes only once the checkpoint is on disk: it traps TERM and waits on.
terminated=0
trap 'terminated=1' TERM

if ! py=$(bash runtime/bootstrap.sh 2>>bootstrap.log | tail -n 1) || [ -z "$py" ]; then
  if [ "$terminated" = 1 ]; then
    emit_error preempted "received SIGTERM while preparing the Python environment; nothing to checkpoint"
    rc=75
  else
    emit_error internal "could not prepare the Python environment on the machine (see bootstrap.log)"
    rc=1
  fi
else
  # The runtime's stderr (stderr.log) also goes to the progress stream as log events, in
  # order with the other events (docs/progress-protocol.md).
  UNDERSTUDY_STREAM_STDERR=1 PYTHONPATH=runtime "$py" -m understudy_trainer train \
    --model "${UNDERSTUDY_MODEL:?}" \
    --dataset data/train.jsonl \
    --output-dir out \
    --checkpoint-dir ckpt \
    --resume \
    --checkpoint-every-seconds "${UNDERSTUDY_CHECKPOINT_EVERY_SECONDS:-600}" \
    --hyperparameters-json "${UNDERSTUDY_HPARAMS:-{\}}" &
  child=$!
  # A trapped signal ends `wait` early; wait again for the runtime's own status.
  while :; do
    terminated=0
    wait "$child"
    rc=$?
    [ "$terminated" = 1 ] || break
  done
fi

# Tell the service directly too, so completion is seen even if its SSH session was lost.
if [ -n "${UNDERSTUDY_CALLBACK_URL:-}" ] && command -v curl >/dev/null 2>&1; then
  curl -fsS -m 10 -X POST \
    -H "Authorization: Bearer ${UNDERSTUDY_COMPLETION_TOKEN:-}" \
    -H 'Content-Type: application/json' \
    -d "{\"exit_code\":$rc}" \
    "$UNDERSTUDY_CALLBACK_URL" >/dev/null 2>&1 || true
fi
exit "$rc"
