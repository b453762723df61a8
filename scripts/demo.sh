#!/usr/bin/env bash
# One real training job end to end on the embedded default (the local provider): start the
# service, submit a job that fine-tunes the tiny local model on the sample dataset, follow
# its progress, then check that the weights are stored and verified, the stack is destroyed,
# the job's sshd is gone and its key deleted. Exits non-zero if any of that fails.
set -euo pipefail
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

"$bin/understudy-train" serve --listen "127.0.0.1:$port" --data-dir "$data" >"$data/serve.out" 2>"$data/serve.log" &
server=$!
cleanup() {
  if kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
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
  --slm-type "$model" --source-llm gpt-3.5-turbo --provider local --dataset "$dataset" \
  --hyperparameters '{"epochs":3}' --wait || fail "job $id did not complete"
elapsed=$(( $(date +%s) - started ))

"$bin/understudy-train" status "$id" >"$data/status.json" || fail "status of $id"
"$bin/understudy-train" stacks >"$data/stacks.txt" || fail "listing stacks"

python3 - "$data" "$id" "$elapsed" <<'PY' || fail "checks after the job"
import hashlib, json, os, subprocess, sys
data, train_id, elapsed = sys.argv[1], sys.argv[2], sys.argv[3]
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
m = st["weights_manifest"].get("metrics") or {}
def f(k):
    v = m.get(k)
    return "?" if v is None else f"{v:.3f}"
print(f"demo: OK — job {train_id} completed in {elapsed}s: {st['progress']['step']} steps, "
      f"eval loss {f('eval_loss_before')} → {f('eval_loss_after')}, eos_rate {f('eos_rate')}, "
      f"{len(files)} files ({size/1e6:.1f} MB) verified at {uri}, stack destroyed, sshd gone, key deleted")
PY
