"""launch.sh as the service runs it: detached in a process group of its own, stopped with
SIGTERM to the whole group (docs/progress-protocol.md)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import SAMPLE, TRAINER

from understudy_trainer import checkpoint


def _job_dir(tmp_path, model):
    job = tmp_path / "job"
    (job / "data").mkdir(parents=True)
    os.symlink(TRAINER, job / "runtime")
    shutil.copy(SAMPLE, job / "data" / "train.jsonl")
    hp = json.dumps({"epochs": 100, "max_seq_len": 64, "batch_size": 2})
    (job / "job.env").write_text(
        f"export UNDERSTUDY_MODEL='{model}'\nexport UNDERSTUDY_HPARAMS='{hp}'\nexport UNDERSTUDY_PYTHON='{sys.executable}'\n")
    return job


def _events(path):
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def test_sigterm_to_the_group_waits_for_the_checkpoint(tiny_model, tmp_path):
    job = _job_dir(tmp_path, tiny_model)
    env = dict(os.environ, UNDERSTUDY_SKIP_GPU_CHECK="1", UNDERSTUDY_NO_TORCHRUN="1")
    env.pop("UNDERSTUDY_CALLBACK_URL", None)
    progress = job / "progress.jsonl"
    with open(progress, "wb") as out, open(job / "stderr.log", "wb") as err:
        p = subprocess.Popen(["bash", "runtime/launch.sh"], cwd=job, env=env, stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not any(e["event"] == "step" for e in _events(progress)):
            assert p.poll() is None, (job / "stderr.log").read_text()[-3000:]
            assert time.time() < deadline, "no step reported"
            time.sleep(0.2)
        os.killpg(p.pid, signal.SIGTERM)
        rc = p.wait(timeout=120)
        # The script's exit is the run's exit: it must come after the checkpoint, not at
        # the signal (a shell that dies at once would report -15 and leave the runtime alone).
        assert rc == 75, (job / "stderr.log").read_text()[-3000:]
        events = _events(progress)
        assert events[-1]["event"] == "error" and events[-1]["code"] == "preempted"
        ck = [e for e in events if e["event"] == "checkpoint"]
        assert ck and ck[-1]["reason"] == "preempted"
        steps = checkpoint.list_steps(str(job / "ckpt"))
        assert steps and steps[-1][0] == ck[-1]["step"]
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
