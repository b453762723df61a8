#!/usr/bin/env bash
# One real training job end to end on the embedded default (the local provider): start the
# service, submit a job that fine-tunes the tiny local model on the sample dataset, follow
# its progress, then check that the weights are stored and verified, the stack is destroyed,
# the job's sshd is gone and its key deleted. Exits non-zero if any of that fails.
#
# PROVIDER=runpod or PROVIDER=lambda runs the same job against the fake cloud
# (bin/understudy-fakecloud): the service talks to it as to RunPod's or Lambda's API, through
# the real Pulumi engine and the in-repo provider, and its machines are real local sshd's.
# The demo then also checks that the fake holds no machine and no registered key.
set -euo pipefail
provider=${PROVIDER:-local}
case "$provider" in local | runpod | lambda) ;; *) echo "demo: PROVIDER must be local, runpod or lambda" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=$root/bin
data=${UNDERSTUDY_DEMO_DATA_DIR:-$root/.understudy-demo}
model=$root/build/tiny-gpt2
dataset=$root/examples/sample-pairs.jsonl

rm -rf "$data"
mkdir -p "$data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export UNDERSTUDY_URL=http://127.0.0.1:$port
export UNDERSTUDY_API_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(24))')

fake=""
fake_url=""
if [ "$provider" != local ]; then
  # The fake cloud keeps everything, machines included, under its own directory.
  mkdir -p "$data/fakecloud" && chmod 700 "$data" "$data/fakecloud"
  ssh_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  export FAKECLOUD_API_KEY=demo-$(python3 -c 'import secrets; print(secrets.token_hex(8))')
  fake_args=(--provider "$provider" --dir "$data/fakecloud" --boot-delay 2s)
  if [ "$provider" = lambda ]; then fake_args+=(--ssh-port "$ssh_port"); fi
  "$bin/understudy-fakecloud" "${fake_args[@]}" >"$data/fakecloud.out" 2>"$data/fakecloud.log" &
  fake=$!
  for _ in $(seq 1 100); do [ -s "$data/fakecloud.out" ] && break; sleep 0.1; done
  fake_url=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["url"])' "$data/fakecloud.out")
  user=$(id -un)
  if [ "$provider" = runpod ]; then
    export RUNPOD_API_URL=$fake_url RUNPOD_API_KEY=$FAKECLOUD_API_KEY RUNPOD_WORK_DIR=$data/fakecloud/work
  else
    export LAMBDA_API_URL=$fake_url LAMBDA_API_KEY=$FAKECLOUD_API_KEY LAMBDA_WORK_DIR=$data/fakecloud/work \
      LAMBDA_SSH_USER=$user LAMBDA_SSH_PORT=$ssh_port UNDERSTUDY_RATE_DIR=$data/rate
  fi
  echo "demo: fake $provider API at $fake_url (machines are sshd's under $data/fakecloud)"
fi

# Local datasets and models are read only under the directories given here.
"$bin/understudy-train" serve --listen "127.0.0.1:$port" --data-dir "$data" \
  --dataset-root "$(dirname "$dataset")" --model-root "$(dirname "$model")" >"$data/serve.out" 2>"$data/serve.log" &
server=$!
cleanup() {
  if kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  if [ -n "$fake" ] && kill -0 "$fake" 2>/dev/null; then
    kill -TERM "$fake" 2>/dev/null || true
    wait "$fake" 2>/dev/null || true
  fi
}
trap cleanup EXIT
fail() { echo "demo: FAILED: $*" >&2; echo "--- service log (last 40 lines) ---" >&2; tail -n 40 "$data/serve.log" >&2 || true; exit 1; }

for _ in $(seq 1 100); do
  curl -fsS "$UNDERSTUDY_URL/healthz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || fail "the service did not start"
  sleep 0.1
done
echo "demo: service up at $UNDERSTUDY_URL (data in $data)"

id=demo-$(date -u +%Y%m%d-%H%M%S)
started=$(date +%s)
"$bin/understudy-train" start --train-id "$id" --endpoint-id demo-endpoint --version 1 \
  --slm-type "$model" --source-llm gpt-3.5-turbo --provider "$provider" --dataset "$dataset" \
  --hyperparameters '{"epochs":3}' --follow || fail "job $id did not complete"
elapsed=$(( $(date +%s) - started ))

"$bin/understudy-train" status --json "$id" >"$data/status.json" || fail "status of $id"
"$bin/understudy-train" stacks >"$data/stacks.txt" || fail "listing stacks"

python3 - "$data" "$id" "$elapsed" "$provider" "$fake_url" <<'PY' || fail "checks after the job"
import hashlib, json, os, subprocess, sys, urllib.request
data, train_id, elapsed, provider, fake_url = sys.argv[1:6]
st = json.load(open(os.path.join(data, "status.json")))
assert st["status"] == "completed", st["status"]
uri = st["weights_uri"]
assert uri.startswith("file://"), uri
root = uri[len("file://"):]
files = st["weights_manifest"]["files"]
assert any(f["path"].endswith(".safetensors") for f in files), "no safetensors weights"
assert any(f["path"] == "manifest.json" for f in files), "no manifest.json"
size = 0
for f in files:
    p = os.path.join(root, f["path"])
    h = hashlib.sha256(open(p, "rb").read()).hexdigest()
    assert h == f["sha256"], f"{p}: sha256 mismatch"
    size += f["size"]
stacks = open(os.path.join(data, "stacks.txt")).read()
assert train_id not in stacks, "the job's stack still exists:\n" + stacks
ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
assert os.path.join(data, "workers") not in ps, "a worker process of the job is still running"
assert not os.path.exists(os.path.join(data, "keys", train_id)), "the job's SSH key was not deleted"
where = ""
if provider != "local":
    fake = json.load(urllib.request.urlopen(fake_url.split("/api/v1")[0] + "/_fake/machines"))
    assert not fake["machines"], f"the fake {provider} still holds machines: {fake['machines']}"
    assert not fake.get("ssh_keys"), f"the fake {provider} still holds registered keys: {fake['ssh_keys']}"
    assert os.path.join(data, "fakecloud", "machines") not in ps, "an sshd of a fake machine is still running"
    m = st["machine"]
    where = f" on {provider} ({m['gpu']}, ${m['hourly_price_usd']:.2f}/h, cost ${st['cost_usd']:.4f}), machine terminated,"
m = st["weights_manifest"].get("metrics") or {}
def f(k):
    v = m.get(k)
    return "?" if v is None else f"{v:.3f}"
print(f"demo: OK — job {train_id} completed in {elapsed}s{where} {st['progress']['step']} steps, "
      f"eval loss {f('eval_loss_before')} → {f('eval_loss_after')}, eos_rate {f('eos_rate')}, "
      f"{len(files)} files ({size/1e6:.1f} MB) verified at {uri}, stack destroyed, sshd gone, key deleted")
PY
