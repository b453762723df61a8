"""Command line: ``python -m understudy_trainer train --model M --dataset FILE ...``.

Exit codes: 0 done, 2 bad input, 1 training failed, 75 preempted (SIGTERM; resume with
--resume). Only protocol lines go to stdout; everything else goes to stderr.
"""

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from . import hparams, progress
from .errors import EXIT_FAILED, EXIT_OK, INTERNAL, INVALID_HYPERPARAMETERS, OUT_OF_MEMORY, BadInput, TrainerError

EXIT_FILE_ENV = "UNDERSTUDY_EXIT_FILE"
# Processes per machine: default one per GPU; set, it runs that many (gloo on the CPU with
# --device cpu: how the multi-process paths are tested without GPUs).
NPROC_ENV = "UNDERSTUDY_NPROC"
# How long a rank waits in a collective for the others (rank 0 writing a large
# checkpoint, a slower share of the held-out generations) before the run fails.
DIST_TIMEOUT_ENV = "UNDERSTUDY_DIST_TIMEOUT_SECONDS"
DEFAULT_DIST_TIMEOUT = 1800
# Set (to 1) by launch.sh: stream the run's stderr as protocol log events
# (progress.StderrFollower), so the job's log shows it in order with the progress. The run's
# stderr must then be a regular file (stderr.log). STDERR_FROM_ENV is the byte of that file
# the stream starts at: where it ended when the first process of the run started, so that
# torchrun's rank 0 also streams what the launching process wrote before it.
STREAM_STDERR_ENV = "UNDERSTUDY_STREAM_STDERR"
STDERR_FROM_ENV = "UNDERSTUDY_STDERR_FROM"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise BadInput(INTERNAL, f"usage: {message}")


def _parser():
    p = _Parser(prog="understudy_trainer", description="Fine-tune a causal LM on prompt/response pairs.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run one fine-tune")
    t.error = p.error
    t.add_argument("--model", required=True, help="Hugging Face id or local model directory")
    t.add_argument("--dataset", required=True, help="JSONL of {prompt, response} or {messages}")
    t.add_argument("--output-dir", required=True)
    t.add_argument("--checkpoint-dir", required=True)
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint, if any")
    t.add_argument("--epochs", type=int)
    t.add_argument("--learning-rate", type=float)
    t.add_argument("--batch-size", type=int, help="examples per GPU per accumulation slice: a step is batch_size x grad_accum x GPUs examples")
    t.add_argument("--max-seq-len", type=int)
    t.add_argument("--grad-accum", type=int, help="batch_size slices per optimizer step (default 1)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-fraction", type=float, default=0.05)
    t.add_argument("--checkpoint-every-steps", type=int, default=0)
    t.add_argument("--checkpoint-every-seconds", type=float, default=600.0)
    t.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps (0: no limit)")
    t.add_argument("--hyperparameters-json", help='e.g. {"epochs": 2, "learning_rate": 5e-5}')
    t.add_argument("--log-every-steps", type=int, default=10)
    t.add_argument("--log-every-seconds", type=float, default=5.0)
    t.add_argument("--lora", choices=("auto", "on", "off"), default="auto")
    t.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    t.add_argument("--no-packing", action="store_true", help="one example per row, padded")
    t.add_argument("--eval-generations", type=int, help="held-out prompts to generate for (default 32 on CPU, 256 on GPU)")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    t.add_argument("--attention", choices=("auto", "varlen", "dense"), default="auto",
                   help="packed examples: variable-length attention (auto: where the GPU has a kernel for it) "
                        "or SDPA with a block-causal mask")
    return p


def options_from_args(args):
    from .train import Options

    explicit = hparams.parse_json(args.hyperparameters_json)
    flags = {"epochs": args.epochs, "learning_rate": args.learning_rate, "batch_size": args.batch_size,
             "max_seq_len": args.max_seq_len}
    explicit.update({k: v for k, v in flags.items() if v is not None})  # flags win over the JSON
    explicit = hparams.validate(explicit)
    if args.log_every_steps < 1 or args.log_every_seconds <= 0:
        raise BadInput(INVALID_HYPERPARAMETERS, "log intervals must be positive")
    if args.eval_generations is not None and args.eval_generations < 0:
        raise BadInput(INVALID_HYPERPARAMETERS, "eval_generations: must not be negative")
    return Options(
        model=args.model, dataset=args.dataset, output_dir=args.output_dir, checkpoint_dir=args.checkpoint_dir,
        resume=args.resume, hyperparameters=explicit, grad_accum=args.grad_accum, seed=args.seed,
        eval_fraction=args.eval_fraction, checkpoint_every_steps=args.checkpoint_every_steps,
        checkpoint_every_seconds=args.checkpoint_every_seconds, max_steps=args.max_steps,
        log_every_steps=args.log_every_steps, log_every_seconds=args.log_every_seconds, lora=args.lora,
        compile=args.compile, pack=not args.no_packing, eval_generations=args.eval_generations, device=args.device,
        attention=args.attention,
    )


def run(argv, stdout, install_signals=True):
    """Runs the CLI with protocol lines written to ``stdout``; returns the exit code."""
    from .train import Dist, Stop

    dist = Dist.from_env()
    emitter = progress.Emitter(stdout, enabled=dist.main)
    follower = _follow_stderr(emitter) if dist.main else None
    stop = Stop()
    previous = None
    if install_signals:
        previous = signal.signal(signal.SIGTERM, stop.handler)
    code = EXIT_FAILED
    try:
        args = _parser().parse_args(argv)
        opts = options_from_args(args)
        if dist.world > 1:
            _init_distributed(dist, opts.device)
        from .train import Run

        Run(opts, emitter, stop, dist).run()
        code = EXIT_OK
    except TrainerError as e:
        code = e.exit_code
        _report(emitter, e.code, e.message)
    except Exception as e:  # noqa: BLE001 - the last line must say what went wrong
        import torch

        traceback.print_exc(file=sys.stderr)
        if isinstance(e, torch.OutOfMemoryError):
            _report(emitter, OUT_OF_MEMORY, "out of GPU memory")
        else:
            _report(emitter, INTERNAL, f"{type(e).__name__}: {str(e)[:2000]}")
        code = EXIT_FAILED
    finally:
        if follower is not None:
            follower.close()
        if install_signals:
            signal.signal(signal.SIGTERM, previous)
        if dist.main and os.environ.get(EXIT_FILE_ENV):
            with open(os.environ[EXIT_FILE_ENV], "w", encoding="utf-8") as f:
                f.write(str(code))
    return code


def _follow_stderr(emitter):
    """Starts streaming stderr when launch.sh asks for it. Only the process that writes the
    protocol (rank 0 under torchrun) follows: it reads the file every process of the run
    writes its stderr to, so there is one writer of stderr events, whose lines come in
    order with its own events."""
    if os.environ.get(STREAM_STDERR_ENV) != "1":
        return None
    try:
        start = int(os.environ[STDERR_FROM_ENV]) if os.environ.get(STDERR_FROM_ENV) else None
    except ValueError:
        start = None
    follower = progress.StderrFollower.open_stderr(emitter, start)
    return follower.start() if follower is not None else None


def _report(emitter, code, message):
    try:
        emitter.error(code, message)
    except Exception:  # noqa: BLE001 - stdout gone: nothing more to say
        traceback.print_exc(file=sys.stderr)


def _init_distributed(dist, device):
    """Joins the run's process group: NCCL on GPUs (plus a gloo group for the host-side
    agreements of each step), gloo on the CPU; both with an explicit timeout."""
    from datetime import timedelta

    import torch

    timeout = timedelta(seconds=float(os.environ.get(DIST_TIMEOUT_ENV) or DEFAULT_DIST_TIMEOUT))
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
        torch.distributed.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", dist.local_rank))
        dist.control = torch.distributed.new_group(backend="gloo", timeout=timeout)
    else:
        torch.distributed.init_process_group("gloo", timeout=timeout)


def _gpu_count():
    """GPUs visible, without initialising CUDA in this process (the workers need it)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    n = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        n = min(n, len([v for v in visible.split(",") if v.strip()]))
    return n


def _workers_of(agent_pid):
    """The pids of torchrun's workers: the agent's child processes (of any of its threads)."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{agent_pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{agent_pid}/task/{task}/children", encoding="ascii") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return out


def _die_with_parent():
    """In the agent, before exec: SIGTERM it when this process dies (even by SIGKILL), so
    that it stops its workers rather than outliving the run."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _relaunch_distributed(argv, n, out_fd):
    """Several processes: re-run this command under torchrun, one process per GPU. Rank 0
    writes the protocol and its exit code.

    SIGTERM goes to the workers themselves, never to the torchrun agent: the agent, signalled,
    would SIGKILL its workers 30 s later, which may be before a large model's checkpoint is
    on disk. So the agent runs in a session of its own (a SIGTERM to this run's process group
    does not reach it), and this process passes SIGTERM on to each worker (each in a session
    of its own too); the workers agree on a step, checkpoint and exit 75, and the agent
    follows them out."""
    with tempfile.TemporaryDirectory(prefix="understudy-") as tmp:
        exit_file = os.path.join(tmp, "exit_code")
        env = dict(os.environ, **{EXIT_FILE_ENV: exit_file, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")})
        # The agent's log dir goes in tmp, which is removed after the run; by default the
        # agent makes one under the system's temp dir and leaves it there.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "--log-dir", os.path.join(tmp, "torchrun"), "-m", "understudy_trainer", *argv]
        print(f"launching {n} processes: {' '.join(cmd)}", file=sys.stderr)
        child = subprocess.Popen(cmd, env=env, stdout=out_fd, stderr=sys.stderr, start_new_session=True,
                                 preexec_fn=_die_with_parent)

        def forward(signum, frame):  # noqa: ARG001 - signal handler signature
            for pid in _workers_of(child.pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

        signal.signal(signal.SIGTERM, forward)
        rc = child.wait()
        try:
            with open(exit_file, encoding="utf-8") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            if rc != 0:
                os.write(out_fd, (json.dumps({"v": 1, "event": "error", "time": time.time(),
                                              "code": INTERNAL, "message": f"torchrun exited {rc}"}) + "\n").encode())
            return EXIT_FAILED if rc else EXIT_OK


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # The protocol owns the real stdout; anything else printing to fd 1 (libraries, C code)
    # lands on stderr instead.
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    protocol = io.TextIOWrapper(os.fdopen(out_fd, "wb", buffering=0), encoding="utf-8", line_buffering=True,
                                write_through=True)
    sys.stdout = sys.stderr
    # One write per line on stderr. Under torchrun every process appends to the same stderr
    # file, and torchrun starts the ranks unbuffered (-u, as PYTHONUNBUFFERED would): print()
    # would then write a line and its newline apart, and two ranks' lines could interleave.
    if isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(line_buffering=True, write_through=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if os.environ.get(STREAM_STDERR_ENV) == "1" and not os.environ.get(STDERR_FROM_ENV):
        try:
            os.environ[STDERR_FROM_ENV] = str(os.fstat(2).st_size)
        except OSError:
            pass
    if _wants_torchrun(argv):
        try:
            n = _process_count(argv)
        except BadInput as e:
            _report(progress.Emitter(protocol), e.code, e.message)
            return e.exit_code
        if n > 1:
            return _relaunch_distributed(argv, n, protocol.fileno())
    return run(argv, protocol)


def _wants_torchrun(argv):
    return "LOCAL_RANK" not in os.environ and os.environ.get("UNDERSTUDY_NO_TORCHRUN") != "1" and argv[:1] == ["train"]


def _process_count(argv):
    """UNDERSTUDY_NPROC when set; otherwise one process per GPU, and one on the CPU."""
    if os.environ.get(NPROC_ENV):
        try:
            n = int(os.environ[NPROC_ENV])
        except ValueError:
            n = 0
        if not 1 <= n <= 64:
            raise BadInput(INVALID_HYPERPARAMETERS, f"{NPROC_ENV}={os.environ[NPROC_ENV]!r}: want a number from 1 to 64")
        return n
    for i, a in enumerate(argv):
        if a == "--device=cpu" or (a == "--device" and argv[i + 1:i + 2] == ["cpu"]):
            return 1
    return _gpu_count()
