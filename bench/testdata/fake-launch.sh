#!/usr/bin/env bash
# A stand-in for the training runtime: speaks the progress protocol for a fixed time
# (secs below, set by the benchmark), then leaves a small output dir.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=__SECONDS__
now() { date +%s.%N; }
printf '{"v":1,"event":"start","time":%s,"model":"fake","total_steps":%d,"epochs":1,"pairs_used":1,"pairs_skipped":0,"device":"cpu","gpu":null,"resumed_from_step":0}\n' "$(now)" "$secs"
end=$(( $(date +%s%N) + secs * 1000000000 ))
step=0
while [ "$(date +%s%N)" -lt "$end" ]; do
  sleep 0.5
  step=$((step + 1))
  printf '{"v":1,"event":"step","time":%s,"step":%d,"total_steps":%d,"epoch":0.5,"loss":1.0,"learning_rate":0.001,"tokens_per_second":1000,"eta_seconds":1}\n' "$(now)" "$step" "$((secs * 2))"
done
mkdir -p out
printf '{"model_type":"fake"}' > out/config.json
head -c 1048576 /dev/zero > out/model.safetensors
files=""
for f in config.json model.safetensors; do
  sum=$(sha256sum "out/$f" | cut -d' ' -f1)
  size=$(stat -c %s "out/$f")
  files="$files${files:+,}{\"path\":\"$f\",\"size\":$size,\"sha256\":\"$sum\"}"
done
printf '{"v":1,"event":"done","time":%s,"output_dir":"out","files":[%s],"metrics":{}}\n' "$(now)" "$files"
