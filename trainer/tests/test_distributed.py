"""Several processes per run (torchrun), on the CPU with gloo: the paths a multi-GPU machine
takes, with the same collectives. Failures are injected per rank through a sitecustomize
module that only these tests put on the workers' path."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import TRAINER, train_args, write_jsonl

from understudy_trainer import checkpoint, modeling, progress

# A run that hangs is a failure, well before the process group's own timeout.
RUN_TIMEOUT = 240


def pairs(n):
    return [{"prompt": f"What is {i} plus one?", "response": f"It is {i + 1}."} for i in range(n)]


def launch(argv, tmp, nproc=2, inject=None, extra_env=None):
    """Starts the CLI as the service's launch.sh does, in a process group of its own, with
    UNDERSTUDY_NPROC processes; ``inject`` is Python run in every process at start-up."""
    env = dict(os.environ, UNDERSTUDY_NPROC=str(nproc), UNDERSTUDY_DIST_TIMEOUT_SECONDS="120",
               OMP_NUM_THREADS="1", PYTHONPATH=TRAINER)
    if inject:
        site = os.path.join(tmp, "site")
        os.makedirs(site, exist_ok=True)
        with open(os.path.join(site, "sitecustomize.py"), "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(inject))
        env["PYTHONPATH"] = site + os.pathsep + TRAINER
    env.update(extra_env or {})
    os.makedirs(tmp, exist_ok=True)
    out = open(os.path.join(tmp, "stdout"), "wb")
    err = open(os.path.join(tmp, "stderr"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "understudy_trainer", *argv], env=env, stdout=out, stderr=err,
                            start_new_session=True)
    proc.files = (out, err)
    return proc


def finish(proc, tmp, timeout=RUN_TIMEOUT):
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _kill_strays(tmp)
        proc.wait()
        pytest.fail(f"the run did not finish within {timeout}s (hung in a collective?):\n{_stderr(tmp)[-3000:]}")
    for f in proc.files:
        f.close()
    _kill_strays(tmp)
    with open(os.path.join(tmp, "stdout"), encoding="utf-8") as f:
        events, _ = progress.parse_stream([line for line in f.read().split("\n") if line])
    return code, events


def _stderr(tmp):
    with open(os.path.join(tmp, "stderr"), encoding="utf-8", errors="replace") as f:
        return f.read()


def _kill_strays(tmp):
    """Ends any process of this run still alive (the agent and workers run in sessions of
    their own): each is found by the run's directory on its command line."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if tmp.encode() in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def losses(events):
    return [e["loss"] for e in events if e["event"] == "step"]


# 20 training examples in steps of 16 over 2 ranks: the last step has 4, dealt 2 and 2;
# before every rank had to take part in every step, rank 1 got none and the run hung at
# step 2. Each step must also compute exactly the step's mean gradient: the loss curve equals
# one process's. The 5 held-out pairs are scored in shares across the ranks (loss and
# generations): the metrics equal one process's too.
def test_uneven_last_step_matches_one_process(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", pairs(25))
    common = ["--epochs", "3", "--eval-fraction", "0.2", "--max-seq-len", "64", "--log-every-steps", "1",
              "--lora", "off", "--compile", "off"]
    two = str(tmp_path / "two")
    code, events = finish(launch(train_args(tiny_model, data, two, "--batch-size", "8", *common), two), two)
    assert code == 0, _stderr(two)[-3000:]
    one = str(tmp_path / "one")
    code1, events1 = finish(launch(train_args(tiny_model, data, one, "--batch-size", "16", *common), one, nproc=1), one)
    assert code1 == 0, _stderr(one)[-3000:]
    assert [e["train_examples"] for e in events + events1 if e["event"] == "start"] == [20, 20]
    assert len(losses(events)) == len(losses(events1)) == 6
    assert losses(events) == pytest.approx(losses(events1), rel=1e-4)
    m2, m1 = events[-1]["metrics"], events1[-1]["metrics"]
    for k in ("eval_loss_before", "eval_loss_after"):
        assert m2[k] == pytest.approx(m1[k], rel=1e-4), k
    for k in ("eos_rate", "empty_rate", "mean_generated_tokens", "chrf", "rouge_l", "chrf_before"):
        assert m2[k] is not None and m2[k] == pytest.approx(m1[k], abs=1e-6), k
    # Each rank's random streams are its own, and each is kept in the checkpoint.
    _, path = checkpoint.load_latest(os.path.join(two, "ckpt"))
    rng = checkpoint.load_tensors(path, "rng.pt")
    assert len(rng["ranks"]) == 2
    assert not torch.equal(rng["ranks"][0]["torch"], rng["ranks"][1]["torch"])


# The service stops a run with SIGTERM to its process group. torchrun's agent, signalled,
# SIGKILLs its workers 30 s later; a checkpoint that takes longer (a large model) must still
# land, and the run exit 75 ready to resume.
def test_sigterm_waits_for_a_slow_checkpoint(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", pairs(64))
    tmp = str(tmp_path)
    slow = """
        import time
        from understudy_trainer import checkpoint
        _save = checkpoint.save
        def save(ckpt_dir, step, state, tensors):
            if state.get("reason") == "preempted":
                time.sleep(35)
            return _save(ckpt_dir, step, state, tensors)
        checkpoint.save = save
    """
    proc = launch(train_args(tiny_model, data, tmp, "--epochs", "100", "--batch-size", "4", "--max-seq-len", "64",
                             "--log-every-steps", "1", "--compile", "off"), tmp, inject=slow)
    deadline = time.time() + RUN_TIMEOUT
    while True:
        with open(os.path.join(tmp, "stdout"), encoding="utf-8") as f:
            if '"event":"step"' in f.read():
                break
        if proc.poll() is not None or time.time() > deadline:
            finish(proc, tmp, timeout=1)
            pytest.fail(f"no step before the run ended:\n{_stderr(tmp)[-3000:]}")
        time.sleep(0.2)
    started = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    code, events = finish(proc, tmp)
    assert code == 75, _stderr(tmp)[-3000:]
    assert time.time() - started >= 35
    ckpts = [e for e in events if e["event"] == "checkpoint"]
    assert ckpts and ckpts[-1]["reason"] == "preempted"
    assert events[-1]["event"] == "error" and events[-1]["code"] == "preempted"
    state, path = checkpoint.load_latest(os.path.join(tmp, "ckpt"))
    assert state["reason"] == "preempted" and os.path.basename(path) == ckpts[-1]["path"]


# Out of memory and a compiler failure on one rank alone: every rank learns of it in the
# same step, they retry together (split micro-batches; eager mode), and the run completes.
def test_one_rank_failures_are_agreed(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", pairs(40))
    tmp = str(tmp_path)
    faults = """
        import os
        import torch
        from understudy_trainer import modeling
        rank = int(os.environ.get("RANK", "0"))
        calls = {"loss": 0}
        _loss_sum = modeling.loss_sum
        def loss_sum(model, batch, device, core=None):
            calls["loss"] += 1
            if rank == 0 and calls["loss"] == 4:
                raise torch.OutOfMemoryError("injected: CUDA out of memory on rank 0")
            return _loss_sum(model, batch, device, core)
        modeling.loss_sum = loss_sum
        def compile(model, **kw):
            def compiled(*args, **kwargs):
                if rank == 1:
                    raise RuntimeError("injected: inductor failed on rank 1")
                return model(*args, **kwargs)
            return compiled
        torch.compile = compile
    """
    proc = launch(train_args(tiny_model, data, tmp, "--epochs", "2", "--batch-size", "4", "--max-seq-len", "64",
                             "--eval-fraction", "0", "--compile", "on"), tmp, inject=faults)
    code, events = finish(proc, tmp)
    assert code == 0, _stderr(tmp)[-3000:]
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert any("torch.compile failed" in m for m in logs), logs
    assert any("splitting each micro-batch in 2" in m for m in logs), logs
    assert events[-1]["event"] == "done"


# An error on a rank other than 0 ends the run at once, and rank 0 reports it.
def test_error_on_another_rank_is_reported(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", pairs(40))
    tmp = str(tmp_path)
    fault = """
        import os
        from understudy_trainer import modeling
        _loss_sum = modeling.loss_sum
        def loss_sum(model, batch, device, core=None):
            if os.environ.get("RANK") == "1":
                raise ValueError("injected: bad batch on rank 1")
            return _loss_sum(model, batch, device, core)
        modeling.loss_sum = loss_sum
    """
    started = time.time()
    code, events = finish(launch(train_args(tiny_model, data, tmp, "--batch-size", "4", "--max-seq-len", "64",
                                            "--eval-fraction", "0", "--compile", "off"), tmp, inject=fault), tmp)
    assert code == 1
    assert events[-1]["event"] == "error" and events[-1]["code"] == "internal"
    assert "bad batch on rank 1" in events[-1]["message"]
    assert time.time() - started < 100  # not the process group's timeout


def test_process_count_is_checked(tiny_model, tmp_path):
    tmp = str(tmp_path)
    code, events = finish(launch(train_args(tiny_model, str(tmp_path / "d.jsonl"), tmp), tmp, nproc="two"), tmp)
    assert code == 2
    assert events[-1]["code"] == "invalid_hyperparameters" and "UNDERSTUDY_NPROC" in events[-1]["message"]


GIB = 1024 ** 3


@pytest.mark.parametrize("n_params,device,memory,world,want", [
    (124e6, "cuda", 80 * GIB, 1, False),      # GPT-2 small: full fine-tune anywhere
    (124e6, "cpu", None, 1, False),           # the CPU never uses LoRA by itself
    (1.5e9, "cuda", 24 * GIB, 1, True),       # 30 GB of state on a 24 GB card
    (1.5e9, "cuda", 80 * GIB, 1, False),
    (3e9, "cuda", 80 * GIB, 1, False),        # 60 GB fits in 85% of 80 GiB (73.0 GB)
    (3.7e9, "cuda", 80 * GIB, 1, True),       # 74 GB does not
    (3.645e9, "cuda", 80 * GIB, 1, False),    # 72.9 GB just fits alone ...
    (3.645e9, "cuda", 80 * GIB, 2, True),     # ... but not beside the gradient buckets
    (7e9, "cuda", 141 * GIB, 8, True),
])
def test_lora_decision(n_params, device, memory, world, want):
    assert modeling.needs_lora(int(n_params), device, memory, world) is want


def test_full_finetune_bytes_counts_gradient_buckets():
    assert modeling.full_finetune_bytes(100e6, 1) == 16 * 100e6 * 1.25
    assert modeling.full_finetune_bytes(100e6, 4) == 16 * 100e6 * 1.25 + modeling.GRAD_BUCKET_BYTES

