"""The training benchmark's smoke mode (trainer/bench/bench_train.py --mode smoke): every
contender trains a few steps of the tiny model on the CPU and both checks (packed-vs-alone,
recompile) pass. It proves the benchmark works, not how fast anything is.

Under `make test` (the runtime's environment) the contenders are the runtime and the Hugging
Face Trainer: TRL is not in the runtime's pinned requirements. `make bench-smoke` runs this
file from the benchmark environment (scripts/benchenv.sh) with UNDERSTUDY_BENCH_ENV=1, and
then the TRL SFTTrainer peer is required too: a benchmark environment without TRL fails.
"""

import json
import os
import subprocess
import sys

from conftest import TRAINER

BENCH = os.path.join(TRAINER, "bench", "bench_train.py")


def test_bench_smoke(tmp_path):
    peers = ["runtime", "hf"]
    if os.environ.get("UNDERSTUDY_BENCH_ENV") == "1":
        peers.append("trl")
    out = tmp_path / "result.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    # A subprocess: the benchmark swaps torch.compile's backend and dynamo's logging while it
    # runs, which must not leak into the other tests.
    proc = subprocess.run([sys.executable, BENCH, "--mode", "smoke", "--peers", ",".join(peers), "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "smoke"
    assert list(result["contenders"]) == peers
    for name, c in result["contenders"].items():
        t = c["tokens_per_second"]
        assert t["n"] == result["repeat"] >= 2, name
        assert 0 < t["min"] <= t["median"] <= t["max"], name
        assert c["mfu"]["median"] > 0, name
    assert set(result["ratios_of_medians"]) == {f"runtime/{p}" for p in peers if p != "runtime"}

    packed = result["checks"]["packed_vs_alone"]
    assert packed["passed"], packed
    assert packed["rows"] == 1 and packed["examples"] >= 3
    # The check can tell a leaky mask from a correct one.
    assert packed["leaky_max_abs_diff"] > 2 * packed["tolerance"] >= 2 * packed["max_abs_diff"]
    assert packed["attention_ops"], "the profiler saw no attention operator"

    recompile = result["checks"]["recompile"]
    assert recompile["passed"], recompile
    assert recompile["runs"] and recompile["runs"][0]["micro_batches"] > 0
