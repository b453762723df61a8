#!/usr/bin/env python3
"""Training throughput of this runtime against the peers a practitioner would use on the same
data, model and machine, plus two correctness checks of the runtime's packed path.

Contenders (all fed the runtime's own examples: same formatting, masking and truncation):

- runtime: ``understudy_trainer`` through its CLI entry point (``cli.run``), in-process.
- hf: ``transformers.Trainer`` with SDPA attention and ``use_cache=False``; on a GPU bf16,
  TF32 and fused AdamW. Collation ``group`` (default): ``group_by_length`` batches padded to
  the longest (multiple of 8); ``flatten``: padding-free ``DataCollatorWithFlattening``.
- trl: TRL ``SFTTrainer``, ``packing=True`` (best-fit decreasing, padding-free, position ids
  restarted per example, so transformers' SDPA path keeps examples apart), completion-only
  loss, gradient checkpointing off, ``use_cache=False``; on a GPU bf16, TF32 and fused
  AdamW. TRL is not in the runtime's environment: run this from the benchmark environment
  (scripts/benchenv.sh) to include it.

Every contender runs ``--repeat`` times, interleaved run by run (runtime, hf, trl, runtime,
...); the figures are the median, min and max of those runs. Tokens per second count trained
tokens (prompt + response, padding excluded) after a warm-up (the runtime's first reporting
window, the peers' first 10% of steps). MFU = tokens/s x (6N + 12·L·H·Q·T) / peak, T the mean
example length, peak the datasheet's dense bf16 figure on a GPU and the best fp32 matmul rate
measured in the same run on a CPU.

Checks (bf16 autocast, on the attention kernel the runtime's path actually picks, which the
profiler names):

- packed-vs-alone: the response loss of each of several examples packed into one row equals
  its loss run alone, within a bf16 tolerance; a deliberately leaky variant (plain causal
  mask over the row) must exceed that tolerance, or the check could not tell.
- recompile: with torch.compile on, the runtime does not recompile for every new packed
  shape (dynamo recompiles counted from its own log; the recompile limit is never hit). On a
  GPU this is read off the measured runs (inductor, as in production); on a CPU a separate
  short run compiles with the "eager" backend (same dynamo guards, no C++ build).

Modes:

    cpu    the tiny GPT-2 built from examples/sample-pairs.jsonl, max_seq_len 128, 200 steps, 5 runs
    gpu    a random-init 124M GPT-2 (tied embeddings, vocab 50257, nothing downloaded), 3,000
           synthetic pairs of ~50-760 tokens (mean ~410), max_seq_len 1024, 16 examples per
           step, 120 steps, 5 runs; prints the goal (>= 400K tokens/s on an H200, ahead of
           both peers). Estimated 6-7 minutes on one H200-class GPU.
    smoke  the tiny model, a few steps, 2 runs: that every contender and check works (tests).

    python trainer/bench/bench_train.py [--mode cpu|gpu|smoke] [--peers runtime,hf,trl]
        [--repeat N] [--steps N] [--json FILE]
"""

import argparse
import contextlib
import functools
import gc
import io
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TRAINER = os.path.dirname(HERE)
REPO = os.path.dirname(TRAINER)
sys.path.insert(0, TRAINER)
sys.path.insert(0, os.path.join(TRAINER, "tools"))

GOAL_TOKENS_PER_SECOND = 400_000  # one H200, 124M GPT-2, seq 1024
CONTENDERS = ("runtime", "hf", "trl")
# Opt-in (--peers): the runtime with packed rows and the block-causal mask instead of
# variable-length attention, to see what the kernel is worth on this GPU.
EXTRA_CONTENDERS = ("runtime-dense",)
# Mean response loss (nats per token) within which packed and alone must agree in bf16.
PACKED_TOLERANCE = 1e-2
# Recompiles a whole run may need (e.g. a one-row micro-batch specialised once).
RECOMPILE_ALLOWANCE = 2

WORDS = ("time year people way day man thing woman life child world school state family student group "
         "country problem hand part place case week company system program question work government number "
         "night point home water room mother area money story fact month lot right study book eye job word "
         "business issue side kind head house service friend father power hour game line end member law car "
         "city community name president team minute idea kid body information back parent face others level "
         "office door health person art war history party result change morning reason research girl guy "
         "moment air teacher force education").split()

MODES = {
    # steps per run, examples per step, max_seq_len, measured runs per contender, steps of the
    # untimed warm-up run of each contender, steps of the CPU recompile check
    "cpu": dict(steps=200, batch_size=16, max_seq_len=128, repeat=5, warmup_steps=10, recompile_steps=30),
    "smoke": dict(steps=6, batch_size=16, max_seq_len=128, repeat=2, warmup_steps=0, recompile_steps=10),
    "gpu": dict(steps=120, batch_size=16, max_seq_len=1024, repeat=5, warmup_steps=20, recompile_steps=0),
}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def synthetic_pairs(n, seed=0):
    """Pairs of varied length (about 50-760 tokens each with the benchmark's tokenizer, mean
    ~410) so that packing matters as it does on real distillation data."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        total = rng.randint(48, 760)  # words; the benchmark's BPE gives about one token per word
        p = rng.randint(8, max(9, total // 2))
        out.append({"prompt": " ".join(rng.choice(WORDS) for _ in range(p)),
                    "response": " ".join(rng.choice(WORDS) for _ in range(total - p)) + "."})
    return out


def cpu_matmul_peak(windows=10, seconds=0.2):
    """Best fp32 1024x1024 matmul rate over short windows (other work may share the CPU)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(windows):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            n += 1
        best = max(best, 2 * 1024 ** 3 * n / (time.perf_counter() - t0))
    return best


def spread(values):
    """Median, min and max of a list of numbers."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


class Sync:
    """Waits for the GPU before a clock is read (a no-op on a CPU)."""

    def __init__(self, device):
        import torch

        self.cuda = device == "cuda"
        self.torch = torch

    def __call__(self):
        if self.cuda:
            self.torch.cuda.synchronize()


# ---- dynamo instrumentation -------------------------------------------------------------


class CompileWatch:
    """Counts dynamo recompiles (from its "recompiles" log) and whether the recompile limit
    was hit, and records the shapes of the micro-batches the runtime builds."""

    def __init__(self):
        self.messages = []
        self.limit_hit = []
        self.shapes = []

    def __enter__(self):
        import torch

        from understudy_trainer import data

        torch._dynamo.reset()
        torch._logging.set_logs(recompiles=True)
        watch = self

        class Handler(logging.Handler):
            def emit(self, record):
                msg = record.getMessage()
                if "Recompiling function" in msg:
                    watch.messages.append(" ".join(line.strip() for line in msg.splitlines()[:4])[:400])
                elif "recompile_limit" in msg or "cache_size_limit" in msg:
                    watch.limit_hit.append(msg.splitlines()[0])

        self.handler = Handler()
        self.logger = logging.getLogger("torch._dynamo")
        self.logger.addHandler(self.handler)
        # The runtime builds each micro-batch with data.collate; recording the shapes tells how
        # many distinct packed shapes the compiled model saw. A runtime without it still runs.
        self.data = data
        self.collate = getattr(data, "collate", None)
        if self.collate is not None:
            inner = self.collate

            @functools.wraps(inner)
            def spy(*args, **kwargs):
                batch = inner(*args, **kwargs)
                ids = batch.get("input_ids") if isinstance(batch, dict) else None
                if ids is not None:
                    watch.shapes.append(tuple(ids.shape))
                return batch

            data.collate = spy
        return self

    def __exit__(self, *exc):
        import torch

        if self.collate is not None:
            self.data.collate = self.collate
        self.logger.removeHandler(self.handler)
        torch._logging.set_logs()

    def result(self):
        return {"recompiles": len(self.messages), "recompile_limit_hit": bool(self.limit_hit),
                "micro_batches": len(self.shapes), "distinct_shapes": len(set(self.shapes)),
                "first_reasons": self.messages[:3]}


@contextlib.contextmanager
def compile_backend(backend):
    """Makes torch.compile use ``backend`` (the runtime's own call is otherwise unchanged)."""
    import torch

    if not backend:
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        torch.compile = original


# ---- contenders -------------------------------------------------------------------------


def run_runtime(model, dataset, work, cfg, extra, steps=None):
    """This runtime through its CLI entry point, in-process (no interpreter start-up). Returns
    the steady-state tokens/s: every reporting window after the first."""
    from understudy_trainer import cli, progress

    steps = steps or cfg.steps
    argv = ["train", "--model", model, "--dataset", dataset, "--output-dir", os.path.join(work, "out"),
            "--checkpoint-dir", os.path.join(work, "ckpt"), "--eval-fraction", "0", "--checkpoint-every-seconds", "0",
            "--max-steps", str(steps), "--epochs", "100", "--batch-size", str(cfg.batch_size),
            "--max-seq-len", str(cfg.max_seq_len), "--learning-rate", "1e-4",
            "--log-every-steps", str(max(1, steps // 10)), "--log-every-seconds", "1000", *extra]
    out = io.StringIO()
    t0 = time.time()
    code = cli.run(argv, out, install_signals=False)
    wall = time.time() - t0
    shutil.rmtree(work, ignore_errors=True)
    events, _ = progress.parse_stream(out.getvalue().splitlines())
    if code != 0:
        raise SystemExit(f"runtime failed (exit {code}): {events[-1] if events else 'no events'}")
    step_events = [e for e in events if e["event"] == "step"]
    tokens = seconds = 0.0
    for prev, cur in zip(step_events, step_events[1:]):
        dt = cur["time"] - prev["time"]
        tokens += cur["tokens_per_second"] * dt
        seconds += dt
    done = events[-1]["metrics"]
    return {"tokens_per_second": tokens / seconds if seconds else done["train_tokens_per_second"],
            "train_tokens": done["train_tokens"], "wall_seconds": wall}


def _examples(tok, pairs, max_seq_len):
    from understudy_trainer import data as tdata

    f = tdata.Formatter(tok)
    examples, _ = tdata.make_examples(
        tdata.encode_pairs(f, [tdata.parse_record(p, i) for i, p in enumerate(pairs)]), max_seq_len)
    return examples, f.eos


class _Counter:
    """Counts trained tokens per step (on the host, before the batch moves: no GPU sync) and
    starts the clock after the warm-up steps."""

    def __init__(self, warm, sync):
        self.tokens = 0
        self.warm = warm
        self.sync = sync
        self.t_warm = None
        self.tokens_warm = 0

    def count(self, inputs):
        if "attention_mask" in inputs:
            self.tokens += int(inputs["attention_mask"].sum())
        else:  # padding-free: one row of real tokens
            self.tokens += int(inputs["input_ids"].numel())

    def callback(self):
        from transformers import TrainerCallback

        counter = self

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == counter.warm:
                    counter.sync()
                    counter.t_warm, counter.tokens_warm = time.time(), counter.tokens

        return Clock()

    def result(self, t0):
        self.sync()
        end = time.time()
        seconds = end - (self.t_warm or t0)
        return {"tokens_per_second": (self.tokens - self.tokens_warm) / seconds, "train_tokens": self.tokens,
                "wall_seconds": end - t0}


def _common_args(device, out, steps):
    gpu = device == "cuda"
    return dict(output_dir=out, max_steps=steps, learning_rate=1e-4, lr_scheduler_type="linear", warmup_steps=0,
                weight_decay=0.0, max_grad_norm=1.0, logging_steps=10 ** 6, save_strategy="no", report_to=[],
                disable_tqdm=True, dataloader_num_workers=0, use_cpu=not gpu, seed=0, bf16=gpu, tf32=gpu or None,
                optim="adamw_torch_fused" if gpu else "adamw_torch")


def _load_peer_model(model_dir, device):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    # With a cache object GPT-2 would not take the packed-sequence (position_ids) mask path.
    model.config.use_cache = False
    return model


def run_hf(model_dir, examples, eos, cfg, device, collation, steps=None):
    """transformers.Trainer as a practitioner would set it up for this data."""
    from transformers import (AutoTokenizer, DataCollatorForSeq2Seq, DataCollatorWithFlattening, Trainer,
                              TrainingArguments)

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    if collation == "flatten":
        collator, group = DataCollatorWithFlattening(), False
    else:
        rows = [dict(r, attention_mask=[1] * len(r["input_ids"])) for r in rows]
        collator, group = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100,
                                                 pad_to_multiple_of=8), True
    steps = steps or cfg.steps
    counter = _Counter(max(1, steps // 10), Sync(device))

    class Counted(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counter.count(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(per_device_train_batch_size=cfg.batch_size, group_by_length=group,
                                 **_common_args(device, out, steps))
        trainer = Counted(model=_load_peer_model(model_dir, device), args=args, train_dataset=rows,
                          data_collator=collator, callbacks=[counter.callback()])
        t0 = time.time()
        # Trainer prints its logs to stdout, which carries this benchmark's JSON.
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train()
        return counter.result(t0)


def run_trl(model_dir, examples, eos, cfg, device, rows_per_step, steps=None):
    """TRL's SFTTrainer with packing, as its documentation sets it up for speed."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    # Pre-tokenised prompt-completion rows: TRL keeps input_ids and builds labels from the
    # completion mask, so it trains on exactly the runtime's tokens.
    dataset = Dataset.from_list([{"input_ids": e.input_ids,
                                  "completion_mask": [0 if t == -100 else 1 for t in e.labels]} for e in examples])
    steps = steps or cfg.steps
    counter = _Counter(max(1, steps // 10), Sync(device))

    class Counted(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counter.count(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(per_device_train_batch_size=rows_per_step, packing=True, packing_strategy="bfd",
                         max_length=cfg.max_seq_len, completion_only_loss=True, gradient_checkpointing=False,
                         **_common_args(device, out, steps))
        trainer = Counted(model=_load_peer_model(model_dir, device), args=args, train_dataset=dataset,
                          processing_class=tok, callbacks=[counter.callback()])
        t0 = time.time()
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train()
        return counter.result(t0)


# ---- checks -----------------------------------------------------------------------------


def _attention_ops(fn, device):
    """Names of the attention operators and kernels that ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
    words = ("attention", "attn", "fmha", "flash")
    return sorted({e.key for e in prof.key_averages() if any(w in e.key.lower() for w in words)})


def check_packed_vs_alone(model_dir, examples, eos, max_len, device):
    """The loss of each example packed with others into one row equals its loss alone."""
    import torch

    from understudy_trainer import data, modeling

    config = modeling.load_config(model_dir)
    model = modeling.load_model(model_dir, config, torch.float32).to(device).eval()
    # The attention path the runtime takes on this device (train.Trainer._choose_attention).
    kernel = modeling.varlen_kernel(device, torch.bfloat16, modeling.head_dim(config))
    varlen = kernel is not None and modeling.enable_varlen(model)

    def layout(exs):
        return data.flatten(exs) if varlen else data.collate(exs, max_len, eos, True)
    # Several short examples with enough targets to give a stable mean, filling one row.
    chosen, total = [], 0
    for ex in sorted(examples, key=len):
        if ex.n_targets >= 4 and total + len(ex) <= max_len and len(chosen) < 6:
            chosen.append(ex)
            total += len(ex)
    if len(chosen) < 3:
        raise SystemExit(f"packed-vs-alone: only {len(chosen)} examples fit in one row of {max_len}")

    def only(k):
        # The same row (packing depends on lengths only), with targets of example k alone.
        return [data.Example(e.input_ids, e.labels if i == k else [data.IGNORE] * len(e), e.pair_index)
                for i, e in enumerate(chosen)]

    def mean_loss(batch):
        with torch.no_grad(), modeling.autocast(device, torch.bfloat16):
            loss, n = modeling.loss_sum(model, batch, device)
        return float(loss) / max(1, n)

    rows = []
    for k, ex in enumerate(chosen):
        packed = layout(only(k))
        alone = layout([ex])
        # Plain causal attention over the same row(s): examples see each other.
        leaky = {"input_ids": packed["input_ids"], "labels": packed["labels"],
                 "attention_mask": torch.ones_like(packed["input_ids"])}
        a = mean_loss(alone)
        rows.append({"tokens": len(ex), "alone": a, "packed": mean_loss(packed), "leaky": mean_loss(leaky)})
    packed_rows = int(layout(chosen)["input_ids"].shape[0])
    ops = _attention_ops(lambda: mean_loss(layout(chosen)), device)
    diff = max(abs(r["packed"] - r["alone"]) for r in rows)
    leak = max(abs(r["leaky"] - r["alone"]) for r in rows)
    ok = diff <= PACKED_TOLERANCE and leak > 2 * PACKED_TOLERANCE and packed_rows == 1
    return {"passed": ok, "examples": len(rows), "rows": packed_rows, "max_abs_diff": diff,
            "tolerance": PACKED_TOLERANCE, "leaky_max_abs_diff": leak, "attention_impl": modeling.attn_impl(model),
            "attention": f"varlen ({kernel})" if varlen else "block-causal mask", "attention_ops": ops,
            "per_example": rows}


def check_recompiles(watches):
    """Passes when no run recompiled more than the allowance or hit the recompile limit."""
    worst = max(watches, key=lambda w: w["recompiles"])
    ok = all(w["recompiles"] <= RECOMPILE_ALLOWANCE and not w["recompile_limit_hit"] for w in watches)
    return {"passed": ok, "allowance": RECOMPILE_ALLOWANCE, "runs": watches, "max_recompiles": worst["recompiles"],
            "distinct_shapes": max(w["distinct_shapes"] for w in watches)}


# ---- driver -----------------------------------------------------------------------------


def build_inputs(mode, work):
    """The model directory, dataset file, pairs and MFU peak for a mode."""
    import torch

    import make_tiny_model
    from understudy_trainer import modeling

    if mode in ("cpu", "smoke"):
        dataset = os.path.join(REPO, "examples", "sample-pairs.jsonl")
        with open(dataset, encoding="utf-8") as f:
            pairs = [json.loads(line) for line in f if line.strip()]
        model = make_tiny_model.build(make_tiny_model.texts_from_jsonl(dataset), os.path.join(work, "model"))
        peak = cpu_matmul_peak(windows=1 if mode == "smoke" else 10)
        return model, dataset, pairs, peak, "measured fp32 1024x1024 matmul, this machine"
    pairs = synthetic_pairs(3000)
    dataset = os.path.join(work, "pairs.jsonl")
    with open(dataset, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    texts = [t for p in pairs[:500] for t in (p["prompt"], p["response"])]
    model = make_tiny_model.build(texts, os.path.join(work, "model"), n_layer=12, n_embd=768, n_head=12,
                                  n_positions=1024, vocab_size=4096, model_vocab_size=50257, dropout=0.0)
    # GPT-2 small ties its input and output embeddings (124,439,808 parameters); the tiny-model
    # tool unties them for the tests' sake, so the weights are made again, tied.
    from transformers import AutoConfig, GPT2LMHeadModel

    config = AutoConfig.from_pretrained(model)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(model, safe_serialization=True)
    gpu = torch.cuda.get_device_name(0)
    peak = modeling.peak_flops(gpu)
    return model, dataset, pairs, peak, f"bf16 dense datasheet, {gpu}"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("auto", "cpu", "gpu", "smoke"), default="auto",
                    help="auto: gpu when CUDA is available, else cpu")
    ap.add_argument("--peers", default=None,
                    help="comma-separated contenders (default: runtime,hf,trl; trl needs the benchmark env; "
                         "runtime-dense: the runtime on the block-causal mask, opt-in)")
    ap.add_argument("--hf-collation", choices=("group", "flatten"), default="group")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int, help="examples per step (the peers: the same tokens per step)")
    ap.add_argument("--max-seq-len", type=int)
    ap.add_argument("--repeat", type=int, help="interleaved runs of each contender (>= 5 for reported figures)")
    ap.add_argument("--no-checks", action="store_true", help="skip the packed-vs-alone and recompile checks")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch

    from understudy_trainer import modeling

    mode = args.mode
    if mode == "auto":
        mode = "gpu" if torch.cuda.is_available() else "cpu"
    if mode == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--mode gpu: no CUDA device available")
    device = "cuda" if mode == "gpu" else "cpu"
    cfg = argparse.Namespace(**MODES[mode])
    for k in ("steps", "batch_size", "max_seq_len", "repeat"):
        if getattr(args, k) is not None:
            setattr(cfg, k, getattr(args, k))
    peers = [p.strip() for p in (args.peers or ",".join(CONTENDERS)).split(",") if p.strip()]
    for p in peers:
        if p not in CONTENDERS + EXTRA_CONTENDERS:
            raise SystemExit(f"--peers: unknown contender {p!r} (known: {', '.join(CONTENDERS + EXTRA_CONTENDERS)})")
    if "trl" in peers:
        try:
            import trl  # noqa: F401
        except ImportError:
            raise SystemExit("the trl peer needs TRL, which is only in the benchmark environment: "
                             "run with $(scripts/benchenv.sh)/bin/python, or pass --peers runtime,hf") from None

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        model, dataset, pairs, peak, peak_source = build_inputs(mode, work)
        from transformers import AutoTokenizer

        config = modeling.load_config(model)
        n_params = modeling.count_params(config)
        tok = AutoTokenizer.from_pretrained(model)
        examples, eos = _examples(tok, pairs, cfg.max_seq_len)
        mean_len = sum(len(e) for e in examples) / len(examples)
        fpt = modeling.flops_per_token(n_params, config, mean_len)
        trl_rows = max(1, round(cfg.batch_size * mean_len / cfg.max_seq_len))
        log(f"mode {mode}: {n_params:,} parameters, {len(examples)} examples of {mean_len:.1f} tokens on average, "
            f"{cfg.steps} steps of {cfg.batch_size} examples (trl: {trl_rows} packed rows), {cfg.repeat} runs each")

        extra = ["--device", device] + (["--compile", "on"] if device == "cuda" else [])
        log(f"inputs ready ({time.time() - started:.0f} s)")
        checks = {}
        if not args.no_checks:
            checks["packed_vs_alone"] = check_packed_vs_alone(model, examples, eos, cfg.max_seq_len, device)
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            c = checks["packed_vs_alone"]
            log(f"packed-vs-alone: {'pass' if c['passed'] else 'FAIL'} "
                f"(max diff {c['max_abs_diff']:.2e}, leaky {c['leaky_max_abs_diff']:.2e}, {c['attention']}: "
                f"{c['attention_ops']})")
        watches = []
        if not args.no_checks and cfg.recompile_steps:
            # A CPU has no time for inductor's C++ builds: same dynamo guards, "eager" backend.
            with compile_backend("eager"), CompileWatch() as w:
                run_runtime(model, dataset, os.path.join(work, "recompile"), cfg,
                            ["--device", device, "--compile", "on"], steps=cfg.recompile_steps)
            watches.append(dict(w.result(), backend="eager", steps=cfg.recompile_steps))
            log(f"recompile run done ({time.time() - started:.0f} s)")

        def run(p, i, steps=None):
            try:
                if p == "runtime":
                    return run_runtime(model, dataset, os.path.join(work, f"runtime-{i}"), cfg, extra, steps=steps)
                if p == "runtime-dense":
                    return run_runtime(model, dataset, os.path.join(work, f"runtime-dense-{i}"), cfg,
                                       extra + ["--attention", "dense"], steps=steps)
                if p == "hf":
                    return run_hf(model, examples, eos, cfg, device, args.hf_collation, steps=steps)
                return run_trl(model, examples, eos, cfg, device, trl_rows, steps=steps)
            finally:
                # Nothing of one contender's run (model, optimizer, cached blocks) may weigh
                # on the next one's.
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()

        if cfg.warmup_steps:
            # Untimed: one-off costs (imports, allocator, CUDA context, inductor's compile and
            # its on-disk cache) must not land in the first measured run of any contender.
            for p in peers:
                t0 = time.time()
                run(p, "warm-up", steps=cfg.warmup_steps)
                log(f"warm-up {p}: {time.time() - t0:.1f} s ({time.time() - started:.0f} s so far)")
        runs = {p: [] for p in peers}
        for i in range(cfg.repeat):
            for p in peers:
                t0 = time.time()
                if p == "runtime" and device == "cuda" and not args.no_checks:
                    # The measured runs compile with inductor, as in production: count their recompiles.
                    with CompileWatch() as watch:
                        r = run(p, i)
                    watches.append(dict(watch.result(), backend="inductor", steps=cfg.steps))
                else:
                    r = run(p, i)
                r["mfu"] = r["tokens_per_second"] * fpt / peak if peak else None
                runs[p].append(r)
                log(f"run {i + 1}/{cfg.repeat} {p}: {r['tokens_per_second']:,.0f} tokens/s "
                    f"({time.time() - t0:.1f} s; {time.time() - started:.0f} s so far)")
        if watches:
            checks["recompile"] = check_recompiles(watches)
            log(f"recompile: {'pass' if checks['recompile']['passed'] else 'FAIL'} "
                f"(at most {checks['recompile']['max_recompiles']} recompiles, "
                f"{checks['recompile']['distinct_shapes']} distinct shapes in a run)")

    summary = {}
    for p, rs in runs.items():
        tps = [r["tokens_per_second"] for r in rs]
        summary[p] = {"tokens_per_second": spread(tps),
                      "mfu": spread([r["mfu"] for r in rs]) if peak else None,
                      "runs_tokens_per_second": [round(t, 1) for t in tps]}
    ratios = {}
    if "runtime" in summary:
        for p in summary:
            if p != "runtime":
                ratios[f"runtime/{p}"] = (summary["runtime"]["tokens_per_second"]["median"]
                                          / summary[p]["tokens_per_second"]["median"])
    result = {
        "mode": mode, "device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "torch_threads": torch.get_num_threads() if device == "cpu" else None,
        "model_parameters": n_params, "steps": cfg.steps, "batch_size": cfg.batch_size, "trl_rows_per_step": trl_rows,
        "max_seq_len": cfg.max_seq_len, "mean_example_tokens": round(mean_len, 1), "repeat": cfg.repeat,
        "hf_collation": args.hf_collation, "flops_per_token": fpt, "peak_flops": peak, "peak_source": peak_source,
        "contenders": summary, "ratios_of_medians": ratios, "checks": checks,
        "seconds": round(time.time() - started, 1),
    }
    if mode == "gpu" and "runtime" in summary:
        med = summary["runtime"]["tokens_per_second"]["median"]
        result["goal"] = {"tokens_per_second": GOAL_TOKENS_PER_SECOND, "runtime_median": med,
                          "fast_enough": med >= GOAL_TOKENS_PER_SECOND,
                          "ahead_of_peers": all(ratios.get(f"runtime/{p}", 0) > 1 for p in ("hf", "trl"))}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    print_table(result)
    failed = [k for k, c in checks.items() if not c["passed"]]
    if failed:
        raise SystemExit(f"checks failed: {', '.join(failed)}")


def print_table(result):
    lines = [f"\n{result['mode']} ({result['gpu'] or 'CPU'}), {result['model_parameters']:,} parameters, "
             f"max_seq_len {result['max_seq_len']}, median of {result['repeat']} interleaved runs [min-max]"]
    for p, s in result["contenders"].items():
        t = s["tokens_per_second"]
        mfu = f"MFU {s['mfu']['median']:.2%} [{s['mfu']['min']:.2%}-{s['mfu']['max']:.2%}]" if s["mfu"] else ""
        lines.append(f"  {p:<13} {t['median']:>12,.0f} tokens/s [{t['min']:,.0f}-{t['max']:,.0f}]  {mfu}")
    for k, v in result["ratios_of_medians"].items():
        lines.append(f"  {k:<21} {v:.2f}x")
    for k, c in result["checks"].items():
        lines.append(f"  check {k}: {'pass' if c['passed'] else 'FAIL'}")
    if "goal" in result:
        g = result["goal"]
        lines.append(f"  goal >= {g['tokens_per_second']:,} tokens/s and ahead of both peers: "
                     f"{'met' if g['fast_enough'] and g['ahead_of_peers'] else 'NOT met'} "
                     f"(runtime median {g['runtime_median']:,.0f}; ahead of peers: {g['ahead_of_peers']})")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
