"""One training run: data, model, the optimizer loop, checkpoints, evaluation and output."""

import hashlib
import json
import math
import os
import platform
import random
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch

from . import checkpoint, data, evaluate, hparams, modeling
from .errors import INTERNAL, INVALID_DATASET, INVALID_HYPERPARAMETERS, OUT_OF_MEMORY, BadInput, Preempted, TrainerError
from .progress import gpu_sample

# 2: one RNG state per rank; chrF before training a corpus score; special-token strings in
# the data encoded as text.
STATE_VERSION = 2

# Tokens per micro-batch: unset, micro-batches are sized by tokens on a GPU
# (hparams.micro_batch_tokens) and hold batch_size examples on the CPU; "0" sizes them by
# examples everywhere.
MICRO_TOKENS_ENV = "UNDERSTUDY_MICRO_BATCH_TOKENS"


@dataclass
class Options:
    model: str
    dataset: str
    output_dir: str
    checkpoint_dir: str
    resume: bool = False
    hyperparameters: dict = field(default_factory=dict)  # explicit, validated against the schema
    grad_accum: int = None
    seed: int = 0
    eval_fraction: float = 0.05
    checkpoint_every_steps: int = 0
    checkpoint_every_seconds: float = 600.0
    max_steps: int = 0
    log_every_steps: int = 10
    log_every_seconds: float = 5.0
    lora: str = "auto"  # auto | on | off
    compile: str = "auto"  # auto | on | off
    pack: bool = True
    eval_generations: int = None
    device: str = "auto"  # auto | cpu | cuda
    # auto: packed examples go through variable-length attention where the GPU has a kernel
    # for it (modeling.varlen_kernel), through SDPA with a block-causal mask elsewhere;
    # varlen: always (CPU: the per-example reference path); dense: never.
    attention: str = "auto"


class Stop:
    """Set from the SIGTERM handler; the loop checks it between steps."""

    def __init__(self):
        self.requested = False

    def handler(self, signum, frame):  # noqa: ARG002 - signal handler signature
        self.requested = True

    def check(self, message="received SIGTERM"):
        if self.requested:
            raise Preempted(message)


@dataclass
class Dist:
    """This process's place among the processes of one run (torchrun sets the environment).
    ``control`` is a gloo process group on the CPU for the small host-side agreements of
    every step (stop requested, a step that failed on some rank, tokens counted), so that they
    never wait on the GPU."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: object = None

    @property
    def main(self):
        return self.rank == 0

    @classmethod
    def from_env(cls):
        if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))

    def sum_host(self, values):
        """Sums a list of numbers over the ranks, on the CPU; returns the sums as floats."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        torch.distributed.all_reduce(t, group=self.control)
        return t.tolist()

    def gather(self, obj):
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=self.control)
        return out

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier(group=self.control)


# Failures of one step on one rank, agreed on by all ranks before anyone goes on: a rank
# that retried or gave up alone would leave the others waiting in a collective until the
# process group's timeout.
_OK, _OOM, _COMPILE, _FATAL = 0, 1, 2, 3


def unwrap(model):
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def library_versions():
    import accelerate
    import numpy
    import peft
    import safetensors
    import tokenizers
    import transformers

    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__, "peft": peft.__version__,
        "accelerate": accelerate.__version__, "numpy": numpy.__version__,
    }


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_list(root):
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root).replace(os.sep, "/")
            out.append({"path": rel, "size": os.path.getsize(p), "sha256": sha256_file(p)})
    return sorted(out, key=lambda f: f["path"])


def _device(opts, dist):
    if opts.device == "cpu" or (opts.device == "auto" and not torch.cuda.is_available()):
        return "cpu", None, None
    if not torch.cuda.is_available():
        raise BadInput(INVALID_HYPERPARAMETERS, "--device cuda: no CUDA device available")
    torch.cuda.set_device(dist.local_rank)
    props = torch.cuda.get_device_properties(dist.local_rank)
    return "cuda", props.name, props.total_memory


def _context_length(config):
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _lr_lambda(total, warmup):
    def f(s):
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (total - s) / max(1, total - warmup))
    return f


class Run:
    def __init__(self, opts, emitter, stop, dist=None):
        self.opts = opts
        self.emit = emitter
        self.stop = stop
        self.dist = dist or Dist()

    # ---- set-up -------------------------------------------------------------------------

    def prepare(self):
        o = self.opts
        if o.grad_accum is not None and o.grad_accum < 1:
            raise BadInput(INVALID_HYPERPARAMETERS, "grad_accum: must be at least 1")
        if not 0 <= o.eval_fraction <= 0.5:
            raise BadInput(INVALID_HYPERPARAMETERS, "eval_fraction: must be between 0 and 0.5")
        for name in ("checkpoint_every_steps", "checkpoint_every_seconds", "max_steps"):
            if getattr(o, name) < 0:
                raise BadInput(INVALID_HYPERPARAMETERS, f"{name}: must not be negative")
        self.pairs, self.dataset_sha256 = data.load_pairs(o.dataset)
        self.config = modeling.load_config(o.model)
        self.tokenizer = modeling.load_tokenizer(o.model)
        self.formatter = data.Formatter(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.formatter.eos
        self.device, self.gpu, self.gpu_memory = _device(o, self.dist)
        self.n_params = modeling.count_params(self.config)
        self.lora = {"on": True, "off": False}.get(o.lora) if o.lora in ("on", "off") else \
            modeling.needs_lora(self.n_params, self.device, self.gpu_memory, self.dist.world)
        self.fingerprint = {
            "model": o.model, "dataset_sha256": self.dataset_sha256, "explicit": o.hyperparameters,
            "grad_accum": o.grad_accum, "seed": o.seed, "eval_fraction": o.eval_fraction,
            "max_steps": o.max_steps, "lora": self.lora, "pack": o.pack, "world": self.dist.world,
        }
        self.resume_state, self.resume_path = None, None
        if self.dist.main:
            checkpoint.clean_temporaries(o.checkpoint_dir)
        if o.resume:
            state, path = checkpoint.load_latest(o.checkpoint_dir)
            if state is not None and state.get("fingerprint") == self.fingerprint and state.get("version") == STATE_VERSION:
                self.resume_state, self.resume_path = state, path
            elif state is not None:
                self.emit.log("checkpoint does not match this run's inputs; starting afresh", "warning")
        self.encoded = data.encode_pairs(self.formatter, self.pairs)
        self._resolve_hyperparameters()
        ctx = _context_length(self.config)
        if ctx and self.hp["max_seq_len"] > ctx:
            raise BadInput(INVALID_HYPERPARAMETERS, f"max_seq_len: {self.hp['max_seq_len']} exceeds the model's context of {ctx}")
        examples, skipped = data.make_examples(self.encoded, self.hp["max_seq_len"])
        self.pairs_skipped = len(skipped)
        self.pairs_used = len(examples)
        if not examples:
            raise BadInput(INVALID_DATASET, f"no pair fits in max_seq_len {self.hp['max_seq_len']}: every response is too long")
        self.train_ex, self.eval_ex = data.split(examples, o.eval_fraction, o.seed)
        self.micro_tokens = self._micro_token_budget()
        self.step_examples = self.hp["batch_size"] * self.hp["grad_accum"] * self.dist.world
        self.steps_per_epoch = max(1, math.ceil(len(self.train_ex) / self.step_examples))
        self.total_steps = self.hp["epochs"] * self.steps_per_epoch
        if o.max_steps:
            self.total_steps = min(self.total_steps, o.max_steps)
        if self.resume_state and self.resume_state.get("total_steps") != self.total_steps:
            self.emit.log("checkpoint's schedule differs from this run's; starting afresh", "warning")
            self.resume_state, self.resume_path = None, None
        if self.resume_state is None and self.dist.main:
            # Checkpoints of another run would outrank this run's when the last two are kept.
            checkpoint.remove_all(o.checkpoint_dir)

    def _micro_token_budget(self):
        """Tokens per micro-batch, or None when micro-batches hold batch_size examples. Sized
        by tokens, short pairs fill a micro-batch instead of leaving the GPU idle, and long
        ones split into several instead of running out of memory; the step (batch_size x
        grad_accum examples per rank) and so the training are the same either way."""
        v = os.environ.get(MICRO_TOKENS_ENV)
        if v is not None and v.strip() != "":
            try:
                n = int(v)
            except ValueError:
                n = -1
            if n < 0:
                raise BadInput(INVALID_HYPERPARAMETERS, f"{MICRO_TOKENS_ENV}={v!r}: want a number of tokens (0: by examples)")
            return n or None
        if self.device == "cuda":
            return hparams.micro_batch_tokens(self.n_params, self.gpu_memory)
        return None

    def _resolve_hyperparameters(self):
        o = self.opts
        if self.resume_state:
            self.hp = dict(self.resume_state["hyperparameters"])
            return
        explicit = o.hyperparameters
        lengths = [len(p) + len(r) for p, r in self.encoded]
        max_seq_len = explicit.get("max_seq_len") or hparams.default_max_seq_len(lengths, _context_length(self.config))
        self.hp = {
            "epochs": explicit.get("epochs") or hparams.default_epochs(len(self.pairs)),
            "learning_rate": explicit.get("learning_rate") or hparams.default_learning_rate(self.n_params, self.lora),
            "batch_size": explicit.get("batch_size") or hparams.default_batch_size(
                self.device, self.n_params, max_seq_len, self.gpu_memory,
                mean_example_tokens=(sum(min(n, max_seq_len) for n in lengths) / max(1, len(lengths))
                                     if o.pack else None)),
            "max_seq_len": max_seq_len,
            "grad_accum": o.grad_accum or 1,
        }

    def build_model(self):
        o = self.opts
        # The same seed on every rank for what is built (LoRA's random init; rank 0's
        # weights are broadcast anyway), then a stream of its own per rank (dropout).
        torch.manual_seed(o.seed)
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            self.amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.amp = None
        base_dtype = self.amp if (self.lora and self.amp is torch.bfloat16) else torch.float32
        model = modeling.load_model(o.model, self.config, base_dtype,
                                    device=f"cuda:{self.dist.local_rank}" if self.device == "cuda" else None)
        self.varlen, self.attention = self._choose_attention(model)
        if self.device == "cuda" and self.n_params >= 1e9:
            # Only big models trade compute for memory; a 124M model never needs it.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.lora:
                model.enable_input_require_grads()
        if self.lora:
            model = modeling.apply_lora(model)
        model.to(self.device)
        model.train()
        self.model = model
        if self.dist.world > 1:
            # Every rank starts from rank 0's weights, as DistributedDataParallel would.
            with torch.no_grad():
                for t in list(model.parameters()) + list(model.buffers()):
                    torch.distributed.broadcast(t.data, 0)
        self.seed_rank()
        params = [p for p in model.parameters() if p.requires_grad]
        self.params = params
        self.trainable = sum(p.numel() for p in params)
        kw = {"fused": True} if self.device == "cuda" else {"foreach": True}
        self.optimizer = torch.optim.AdamW(params, lr=self.hp["learning_rate"], betas=(0.9, 0.999),
                                           weight_decay=0.0, **kw)
        warmup = max(1, min(100, self.total_steps // 20))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(self.total_steps, warmup))
        self.scaler = torch.amp.GradScaler("cuda") if self.amp is torch.float16 else None
        self.micro_split = 1
        self.start_step = 0
        self.tokens_trained = 0
        self.train_seconds = 0.0
        self.before = {}
        if self.resume_state:
            self._restore()
        self.train_model = self.model
        self.compiled = False
        want_compile = o.compile == "on" or (o.compile == "auto" and self.device == "cuda"
                                              and self.total_steps - self.start_step >= 300)
        if want_compile:
            # Compilation costs tens of seconds up front: only worth it on long runs.
            self.train_model = torch.compile(self.model, dynamic=True)
            self.compiled = True

    def _choose_attention(self, model):
        """Switches ``model`` to variable-length attention when asked or, on auto, when the
        device has a kernel for it. Returns (whether it did, the path's name for reports)."""
        o = self.opts
        kernel = modeling.varlen_kernel(self.device, self.amp, modeling.head_dim(self.config))
        if o.attention == "dense" or not o.pack or (o.attention == "auto" and kernel is None):
            if o.attention == "varlen":
                raise BadInput(INVALID_HYPERPARAMETERS, "--attention varlen needs packing (drop --no-packing)")
            return False, modeling.attn_impl(model) + (" (block-causal mask)" if o.pack else "")
        if not modeling.enable_varlen(model):
            if o.attention == "varlen":
                raise BadInput(INVALID_HYPERPARAMETERS, f"--attention varlen: this model's attention "
                                                        f"({modeling.attn_impl(model)}) cannot be switched")
            return False, modeling.attn_impl(model) + " (block-causal mask)"
        return True, f"varlen ({kernel or 'per-example reference'})"

    def seed_rank(self):
        """Seeds this rank's own random streams: ranks that share one stream drop out the
        same units of their different examples."""
        seed = self.opts.seed + 1_000_003 * self.dist.rank
        torch.manual_seed(seed)
        random.seed(seed)

    def _restore(self):
        path, state = self.resume_path, self.resume_state
        weights = checkpoint.load_tensors(path, "model.pt")
        if self.lora:
            from peft import set_peft_model_state_dict
            set_peft_model_state_dict(self.model, weights)
        else:
            self.model.load_state_dict(weights)
        self.model.to(self.device)
        opt = checkpoint.load_tensors(path, "optimizer.pt", map_location=self.device)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        if self.scaler is not None and opt.get("scaler"):
            self.scaler.load_state_dict(opt["scaler"])
        rng = checkpoint.load_tensors(path, "rng.pt")
        ranks = rng.get("ranks") or [rng]  # one state per rank; older checkpoints kept one
        if len(ranks) == self.dist.world:
            mine = ranks[self.dist.rank]
            torch.set_rng_state(mine["torch"])
            if self.device == "cuda" and mine.get("cuda") is not None:
                torch.cuda.set_rng_state(mine["cuda"])
            random.setstate(mine["python"])
        self.start_step = state["step"]
        self.micro_split = state.get("micro_split", 1)
        self.tokens_trained = state["tokens_trained"]
        self.train_seconds = state["train_seconds"]
        self.before = state.get("before", {})

    # ---- checkpoints --------------------------------------------------------------------

    def _rng_state(self):
        return {"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state() if self.device == "cuda" else None}

    def save_checkpoint(self, step, reason):
        # Each rank's random streams go into the checkpoint, restored per rank on resume.
        rngs = self.dist.gather(self._rng_state())
        if self.dist.main:
            if self.lora:
                from peft import get_peft_model_state_dict
                weights = get_peft_model_state_dict(self.model)
            else:
                weights = self.model.state_dict()
            state = {
                "version": STATE_VERSION, "fingerprint": self.fingerprint, "step": step,
                "total_steps": self.total_steps, "hyperparameters": self.hp, "micro_split": self.micro_split,
                "tokens_trained": self.tokens_trained, "train_seconds": self.train_seconds, "before": self.before,
                "reason": reason,
            }
            tensors = {
                "model.pt": weights,
                "optimizer.pt": {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                                 "scaler": self.scaler.state_dict() if self.scaler else None},
                "rng.pt": {"ranks": rngs},
            }
            name = checkpoint.save(self.opts.checkpoint_dir, step, state, tensors)
            self.emit.emit("checkpoint", step=step, path=name, reason=reason)
        self.dist.barrier()
        self.last_checkpoint = (step, time.time())

    # ---- training -----------------------------------------------------------------------

    def _step_examples(self, step):
        epoch, k = divmod(step, self.steps_per_epoch)
        order = data.epoch_order(len(self.train_ex), self.opts.seed, epoch)
        n = self.step_examples
        return [self.train_ex[i] for i in order[k * n:(k + 1) * n]]

    def _micro_batches(self, examples):
        """This rank's micro-batches of a step: the step's examples dealt out one by one, so
        that every rank gets a share as even as can be; a rank may get none (a short last
        step), and still takes part in the step's collectives."""
        mine = examples[self.dist.rank::self.dist.world]
        if self.micro_tokens:
            return self._token_micro_batches(mine)
        bs = self.hp["batch_size"]
        out = []
        for i in range(0, len(mine), bs):
            mb = mine[i:i + bs]
            size = max(1, math.ceil(len(mb) / self.micro_split))
            out += [mb[j:j + size] for j in range(0, len(mb), size)]
        return out

    def _micro_cost(self, mb_len, n_examples, longest):
        """The tokens a micro-batch occupies: its tokens when packed, its rows padded to the
        longest when not."""
        return mb_len if self.opts.pack else n_examples * longest

    def _token_micro_batches(self, mine):
        """Cuts this rank's examples, in order, into micro-batches of at most the token budget
        (halved on each out-of-memory retry); an example longer than the budget goes alone."""
        budget = max(1, self.micro_tokens // self.micro_split)
        out, cur, tokens, longest = [], [], 0, 0
        for e in mine:
            n = len(e.input_ids)
            if cur and self._micro_cost(tokens + n, len(cur) + 1, max(longest, n)) > budget:
                out.append(cur)
                cur, tokens, longest = [], 0, 0
            cur.append(e)
            tokens += n
            longest = max(longest, n)
        if cur:
            out.append(cur)
        return out

    def _one_example_per_micro_batch(self, examples):
        """Whether every micro-batch of the step holds a single example, on every rank (it is
        computed from the whole step, which all ranks share): splitting further cannot help."""
        if not self.micro_tokens:
            return self.micro_split >= self.hp["batch_size"]
        shortest = min((len(e.input_ids) for e in examples), default=0)
        return self.micro_tokens // self.micro_split < 2 * shortest

    def _stop_requested(self):
        # Every rank stops at the same step, whichever got the signal.
        return self.dist.sum_host([int(self.stop.requested)])[0] > 0

    def _train_step(self, step):
        examples = self._step_examples(step)
        total_targets = max(1, sum(e.n_targets for e in examples))
        while True:
            failure, error = _OK, None
            try:
                loss_acc, tokens = self._local_step(examples, total_targets)
            except torch.OutOfMemoryError:
                failure = _OOM
            except TrainerError as e:
                failure, error = _FATAL, e
            except Exception as e:  # noqa: BLE001 - a compiler failure falls back to eager mode
                failure, error = (_COMPILE if self.compiled else _FATAL), e
                if failure == _FATAL:
                    traceback.print_exc(file=sys.stderr)
            # One agreement per step, on the CPU: what failed where, and the tokens counted.
            oom, compile_failed, fatal, tokens = self.dist.sum_host(
                [failure == _OOM, failure == _COMPILE, failure == _FATAL, tokens if failure == _OK else 0])
            if fatal:
                errors = self.dist.gather(_describe(error) if failure == _FATAL else None)
                code, message = next((e for e in errors if e is not None))
                raise TrainerError(code, message)
            if oom or compile_failed:
                self.optimizer.zero_grad(set_to_none=True)
                if self.device == "cuda":
                    torch.cuda.empty_cache()
                if compile_failed:
                    name = type(error).__name__ if failure == _COMPILE else "on another rank"
                    self.emit.log(f"torch.compile failed ({name}); continuing without it", "warning")
                    self.train_model = self.model
                    self.compiled = False
                    continue
                if self._one_example_per_micro_batch(examples):
                    raise TrainerError(OUT_OF_MEMORY, f"out of GPU memory even with one example per micro-batch "
                                                      f"(max_seq_len {self.hp['max_seq_len']})")
                self.micro_split *= 2
                self.emit.log(f"out of GPU memory: micro-batches of at most {self.micro_tokens // self.micro_split} tokens"
                              if self.micro_tokens else f"out of GPU memory: splitting each micro-batch in {self.micro_split}",
                              "warning")
                continue
            return self._apply_step(loss_acc, total_targets, int(tokens))

    def _local_step(self, examples, total_targets):
        """Forward and backward of this rank's micro-batches, gradients left on this rank.
        Returns (the sum of its target losses, on the device; its tokens)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss_acc = torch.zeros((), device=self.device)
        tokens = 0
        # Each rank's gradient is its share of the step's mean; the ranks' sum is the mean.
        scale = 1.0 / total_targets
        for mb in self._micro_batches(examples):
            batch = data.flatten(mb) if self.varlen else data.collate(mb, self.hp["max_seq_len"], self.pad_id,
                                                                          self.opts.pack)
            with modeling.autocast(self.device, self.amp):
                loss, _ = modeling.loss_sum(self.train_model, batch, self.device, core=self.model)
            scaled = loss * scale
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
            loss_acc += loss.detach()
            tokens += batch["n_tokens"]
        return loss_acc, tokens

    def _sum_gradients(self):
        """Sums the trainable parameters' gradients over the ranks, in buckets of one dtype;
        a rank that had no example this step adds zeros."""
        groups = {}
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            groups.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in groups.values():
            bucket, size = [], 0
            for g in grads:
                if bucket and size + g.numel() > modeling.GRAD_BUCKET_ELEMENTS:
                    _all_reduce_bucket(bucket)
                    bucket, size = [], 0
                bucket.append(g)
                size += g.numel()
            _all_reduce_bucket(bucket)

    def _apply_step(self, loss_acc, total_targets, tokens):
        if self.dist.world > 1:
            self._sum_gradients()
            # Summed on the device, asynchronously: read only when a step is reported.
            torch.distributed.all_reduce(loss_acc)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        return loss_acc, total_targets, tokens, lr

    def train(self):
        o = self.opts
        self.last_checkpoint = (self.start_step, time.time())
        win_loss, win_targets, win_tokens, win_steps = torch.zeros((), device=self.device), 0, 0, 0
        win_start = time.time()
        last_report = (self.start_step, win_start)
        lens = [len(e) for e in self.train_ex]
        fpt = modeling.flops_per_token(self.n_params if not self.lora else self.n_params * 2 // 3,
                                       self.config, sum(lens) / max(1, len(lens)))
        peak = modeling.peak_flops(self.gpu)
        for step in range(self.start_step, self.total_steps):
            if self._stop_requested():
                self._preempt(step)
            t0 = time.time()
            loss_acc, targets, tokens, lr = self._train_step(step)
            win_loss += loss_acc
            win_targets += targets
            win_tokens += tokens
            win_steps += 1
            done = step + 1
            now = time.time()
            if self.device == "cuda" and (done == self.total_steps or now - last_report[1] >= o.log_every_seconds
                                          or done - last_report[0] >= o.log_every_steps):
                torch.cuda.synchronize()
                now = time.time()
            self.train_seconds += now - t0
            self.tokens_trained += tokens
            if done == self.total_steps or now - last_report[1] >= o.log_every_seconds or \
                    done - last_report[0] >= o.log_every_steps:
                loss = float(win_loss) / max(1, win_targets)
                if not math.isfinite(loss):
                    raise TrainerError(INTERNAL, f"training diverged at step {done}: loss is {loss}")
                elapsed = max(1e-9, now - win_start)
                tps = win_tokens / elapsed
                mfu = (tps * fpt / (peak * self.dist.world)) if peak else None
                eta = (self.total_steps - done) * elapsed / win_steps
                self.emit.emit("step", step=done, total_steps=self.total_steps,
                               epoch=round(done / self.steps_per_epoch, 4), loss=round(loss, 6),
                               learning_rate=lr, tokens_per_second=round(tps, 1),
                               mfu=round(mfu, 4) if mfu is not None else None, eta_seconds=round(eta, 1),
                               **(gpu_sample(self.dist.local_rank) if self.device == "cuda" else {}))
                win_loss, win_targets, win_tokens, win_steps = torch.zeros((), device=self.device), 0, 0, 0
                win_start = time.time()
                last_report = (done, win_start)
            if done < self.total_steps and (
                    (o.checkpoint_every_steps and done % o.checkpoint_every_steps == 0)
                    or (o.checkpoint_every_seconds and time.time() - self.last_checkpoint[1] >= o.checkpoint_every_seconds)):
                self.save_checkpoint(done, "interval")
        if self.start_step < self.total_steps:
            self.save_checkpoint(self.total_steps, "final")

    def _preempt(self, step):
        if step == 0:
            raise Preempted("received SIGTERM before the first step; nothing to checkpoint")
        if self.last_checkpoint[0] != step:
            self.save_checkpoint(step, "preempted")
        raise Preempted(f"received SIGTERM; checkpoint {checkpoint.name_for(step)} written, resume with --resume")

    # ---- evaluation and output ----------------------------------------------------------

    def _eval_pass(self, phase, step):
        if not self.eval_ex:
            return {}
        bs = max(1, self.hp["batch_size"])
        msg = "received SIGTERM during evaluation" + ("; resume with --resume" if phase == "after" else "")
        # Every rank scores its share of the held-out examples; the sums are combined.
        shard = self.eval_ex[self.dist.rank::self.dist.world]
        mean = evaluate.eval_loss(self.model, shard, self.hp["max_seq_len"], self.pad_id, self.device, self.amp, bs,
                                  stop=_Checker(self.stop, msg))
        count = sum(e.n_targets for e in shard)
        total, count = self.dist.sum_host([(mean or 0.0) * count, count])
        loss = total / max(count, 1)
        ppl = evaluate.perplexity(loss)
        self.emit.emit("eval", step=step, eval_loss=round(loss, 6), perplexity=round(ppl, 4), phase=phase)
        n_gen = self.opts.eval_generations
        if n_gen is None:
            n_gen = 256 if self.device == "cuda" else 32
        idx = sorted(ex.pair_index for ex in self.eval_ex)[:n_gen]
        result = {"eval_loss": loss, "perplexity": ppl}
        if not idx:
            return result
        stop_ids = {self.formatter.eos}
        gen_eos = getattr(unwrap(self.model).generation_config, "eos_token_id", None)
        if gen_eos is not None:
            stop_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        # Every rank generates for its share of the pairs; rank 0 scores them all together.
        mine = idx[self.dist.rank::self.dist.world]
        gen = evaluate.generate(
            unwrap(self.model), self.tokenizer, self.formatter, [self.pairs[i] for i in mine], self.hp["max_seq_len"],
            self.device, self.amp, min(64, max(8, bs)), stop_ids, stop=_Checker(self.stop, msg),
            encoded=[self.encoded[i] for i in mine])
        shares = self.dist.gather(gen["generations"])
        if not self.dist.main:
            return {}
        generations = [None] * len(idx)
        for rank, share in enumerate(shares):
            generations[rank::self.dist.world] = share
        scored = evaluate.score([self.pairs[i] for i in idx], generations)
        result.update({k: scored[k] for k in ("eos_rate", "empty_rate", "mean_generated_tokens", "chrf", "rouge_l")})
        print(json.dumps({"phase": phase, "samples": scored["samples"]}, ensure_ascii=False), file=sys.stderr)
        return result

    def save_output(self, metrics):
        o = self.opts
        out = os.path.abspath(o.output_dir)
        parent = os.path.dirname(out)
        os.makedirs(parent, exist_ok=True)
        base = os.path.basename(out)
        for entry in os.listdir(parent):  # left by a run that died while saving
            if entry.startswith((f"{base}.tmp-", f"{base}.old-")):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        tmp = f"{out}.tmp-{os.getpid()}"
        model = unwrap(self.model)
        if self.lora:
            model = model.merge_and_unload()
        gen = model.generation_config
        if gen.eos_token_id is None:
            gen.eos_token_id = self.formatter.eos
        if gen.pad_token_id is None:
            gen.pad_token_id = self.pad_id
        model.save_pretrained(tmp, safe_serialization=True)
        self.tokenizer.save_pretrained(tmp)
        files = file_list(tmp)
        manifest = {
            "base_model": o.model,
            "dataset_sha256": self.dataset_sha256,
            "pairs": {"used": self.pairs_used, "skipped": self.pairs_skipped, "train": len(self.train_ex),
                      "eval": len(self.eval_ex)},
            "hyperparameters": self.hp,
            "training": {"seed": o.seed, "eval_fraction": o.eval_fraction, "total_steps": self.total_steps,
                         "lora": self.lora, "packing": o.pack, "attention": self.attention,
                         "device": self.device, "gpu": self.gpu,
                         "world_size": self.dist.world, "trainable_parameters": self.trainable,
                         "parameters": self.n_params},
            "versions": library_versions(),
            "files": files,
            "metrics": metrics,
        }
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        if os.path.exists(out):
            old = f"{out}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        return out

    def run(self):
        self.prepare()
        self.stop.check("received SIGTERM before training started; nothing to checkpoint")
        self.build_model()
        self.emit.emit(
            "start", model=self.opts.model, total_steps=self.total_steps, epochs=self.hp["epochs"],
            pairs_used=self.pairs_used, pairs_skipped=self.pairs_skipped, train_examples=len(self.train_ex),
            eval_examples=len(self.eval_ex), device=self.device, gpu=self.gpu, resumed_from_step=self.start_step,
            hyperparameters={k: self.hp[k] for k in ("epochs", "learning_rate", "batch_size", "max_seq_len", "grad_accum")}
            | {"lora": self.lora})
        if self.pairs_skipped:
            self.emit.log(f"{self.pairs_skipped} pairs skipped: response longer than max_seq_len "
                          f"{self.hp['max_seq_len']}", "warning")
        if not self.resume_state:
            self.before = self._eval_pass("before", 0)
        self.train()
        after = self._eval_pass("after", self.total_steps)
        if not self.dist.main:
            return None
        b = self.before
        metrics = {
            "eval_loss_before": b.get("eval_loss"), "eval_perplexity_before": b.get("perplexity"),
            "eval_loss_after": after.get("eval_loss"), "eval_perplexity_after": after.get("perplexity"),
            "eos_rate_before": b.get("eos_rate"), "eos_rate": after.get("eos_rate"),
            "empty_rate_before": b.get("empty_rate"), "empty_rate": after.get("empty_rate"),
            "mean_generated_tokens_before": b.get("mean_generated_tokens"),
            "mean_generated_tokens": after.get("mean_generated_tokens"),
            "chrf_before": b.get("chrf"), "chrf": after.get("chrf"),
            "rouge_l_before": b.get("rouge_l"), "rouge_l": after.get("rouge_l"),
            "train_tokens": self.tokens_trained, "train_seconds": round(self.train_seconds, 3),
            "train_tokens_per_second": round(self.tokens_trained / max(self.train_seconds, 1e-9), 1),
            "steps": self.total_steps,
        }
        metrics = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}
        self.stop.check("received SIGTERM while saving the output; resume with --resume")
        out = self.save_output(metrics)
        files = file_list(out)
        self.emit.emit("done", files=files, metrics=metrics, output_dir=self.opts.output_dir)
        return out


def _all_reduce_bucket(grads):
    """Sums ``grads`` over the ranks in one collective, through one flat buffer."""
    flat = torch._utils._flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat)
    for dst, src in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        dst.copy_(src)


def _describe(error):
    """(code, message) of a failure, for the rank that reports it."""
    if isinstance(error, TrainerError):
        return error.code, error.message
    return INTERNAL, f"{type(error).__name__}: {str(error)[:2000]}"


class _Checker:
    def __init__(self, stop, message):
        self.stop, self.message = stop, message

    def check(self):
        self.stop.check(self.message)
