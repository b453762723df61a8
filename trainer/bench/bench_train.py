#!/usr/bin/env python3
"""Training throughput of this runtime against a plain Hugging Face Trainer baseline (fp32,
one example per row padded to the longest in the batch, no compile) on the same data, model
and machine. Reports trained tokens per second (prompt + response, padding excluded) and MFU.

CPU: the tiny GPT-2 built from examples/sample-pairs.jsonl, max_seq_len 128. MFU is measured
against this machine's fp32 matmul throughput, as a CPU has no datasheet peak worth quoting.
GPU: a random-init GPT-2-small-sized model (124M, nothing downloaded) on synthetic pairs of
64-1000 tokens, max_seq_len 1024, bf16 peak from the GPU's datasheet. Under five minutes.

    python trainer/bench/bench_train.py [--device auto|cpu|cuda] [--steps N] [--json FILE]
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TRAINER = os.path.dirname(HERE)
REPO = os.path.dirname(TRAINER)
sys.path.insert(0, TRAINER)
sys.path.insert(0, os.path.join(TRAINER, "tools"))

WORDS = ("time year people way day man thing woman life child world school state family student group "
         "country problem hand part place case week company system program question work government number "
         "night point home water room mother area money story fact month lot right study book eye job word "
         "business issue side kind head house service friend father power hour game line end member law car "
         "city community name president team minute idea kid body information back parent face others level "
         "office door health person art war history party result change morning reason research girl guy "
         "moment air teacher force education").split()


def synthetic_pairs(n, seed=0):
    """Pairs of varied length (about 64-1000 tokens each) so that packing matters as it does on
    real distillation data."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        total = rng.randint(48, 760)  # words; the small BPE gives ~1.3 tokens per word
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


def run_runtime(model, dataset, work, args, extra):
    """This runtime, in-process (the same code path as the CLI, without the interpreter start)."""
    import io
    import shutil

    from understudy_trainer import cli, progress

    argv = ["train", "--model", model, "--dataset", dataset, "--output-dir", os.path.join(work, "out"),
            "--checkpoint-dir", os.path.join(work, "ckpt"), "--eval-fraction", "0", "--checkpoint-every-seconds", "0",
            "--max-steps", str(args.steps), "--epochs", "100", "--batch-size", str(args.batch_size),
            "--max-seq-len", str(args.max_seq_len), "--learning-rate", "1e-4",
            "--log-every-steps", str(max(1, args.steps // 10)), *extra]
    out = io.StringIO()
    t0 = time.time()
    code = cli.run(argv, out, install_signals=False)
    wall = time.time() - t0
    shutil.rmtree(work, ignore_errors=True)
    events, _ = progress.parse_stream(out.getvalue().splitlines())
    if code != 0:
        raise SystemExit(f"runtime failed: {events[-1] if events else code}")
    steps = [e for e in events if e["event"] == "step"]
    # Steady state: skip the first window (compilation, allocator warm-up).
    tokens = seconds = 0.0
    for prev, cur in zip(steps, steps[1:]):
        dt = cur["time"] - prev["time"]
        tokens += cur["tokens_per_second"] * dt
        seconds += dt
    done = events[-1]["metrics"]
    return {"tokens_per_second": tokens / seconds if seconds else done["train_tokens_per_second"],
            "train_tokens": done["train_tokens"], "train_seconds": done["train_seconds"], "wall_seconds": wall,
            "mfu_reported": steps[-1].get("mfu")}


def run_baseline(model_dir, pairs, args, device):
    """transformers.Trainer as most fine-tuning scripts use it."""
    import torch
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments)

    from understudy_trainer import data as tdata

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    f = tdata.Formatter(tok)
    examples, _ = tdata.make_examples(tdata.encode_pairs(f, [tdata.parse_record(p, i) for i, p in enumerate(pairs)]),
                                      args.max_seq_len)
    rows = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e)} for e in examples]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    counted = {"tokens": 0, "steps": 0, "t": None, "warm_tokens": 0}
    warm = max(1, args.steps // 10)

    class Count(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counted["tokens"] += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step == warm:
                if device == "cuda":
                    torch.cuda.synchronize()
                counted["t"], counted["warm_tokens"] = time.time(), counted["tokens"]

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=1e-4,
            logging_steps=10 ** 6, save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
            use_cpu=device == "cpu", seed=0,
        )
        trainer = Count(model=model, args=targs, train_dataset=rows,
                        data_collator=DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100),
                        callbacks=[Clock()])
        t0 = time.time()
        trainer.train()
        if device == "cuda":
            torch.cuda.synchronize()
        end = time.time()
    seconds = end - (counted["t"] or t0)
    return {"tokens_per_second": (counted["tokens"] - counted["warm_tokens"]) / seconds,
            "train_tokens": counted["tokens"], "wall_seconds": end - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--max-seq-len", type=int)
    ap.add_argument("--repeat", type=int, help="runs of each side, best kept (default 5 on CPU, 1 on GPU)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import torch

    import make_tiny_model
    from understudy_trainer import modeling

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        if device == "cpu":
            args.steps = args.steps or 60
            args.batch_size = args.batch_size or 16
            args.max_seq_len = args.max_seq_len or 128
            dataset = os.path.join(REPO, "examples", "sample-pairs.jsonl")
            with open(dataset, encoding="utf-8") as f:
                pairs = [json.loads(line) for line in f if line.strip()]
            model = make_tiny_model.build(make_tiny_model.texts_from_jsonl(dataset), os.path.join(work, "model"))
            extra = ["--device", "cpu"]
            peak, peak_source = cpu_matmul_peak(), "measured fp32 matmul, this machine"
            torch_threads = torch.get_num_threads()
        else:
            args.steps = args.steps or 200
            args.batch_size = args.batch_size or 16
            args.max_seq_len = args.max_seq_len or 1024
            pairs = synthetic_pairs(4000)
            dataset = os.path.join(work, "pairs.jsonl")
            with open(dataset, "w", encoding="utf-8") as f:
                for p in pairs:
                    f.write(json.dumps(p) + "\n")
            texts = [t for p in pairs[:500] for t in (p["prompt"], p["response"])]
            model = make_tiny_model.build(texts, os.path.join(work, "model"), n_layer=12, n_embd=768, n_head=12,
                                          n_positions=1024, vocab_size=4096, model_vocab_size=50257, dropout=0.0)
            extra = ["--device", "cuda", "--compile", "on"]
            gpu = torch.cuda.get_device_name(0)
            peak, peak_source = modeling.peak_flops(gpu), f"bf16 dense datasheet, {gpu}"
            torch_threads = None

        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
        n_params = modeling.count_params(config)
        from understudy_trainer import data as tdata
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model)
        fmt = tdata.Formatter(tok)
        exs, _ = tdata.make_examples(tdata.encode_pairs(fmt, [tdata.parse_record(p, i) for i, p in enumerate(pairs)]),
                                     args.max_seq_len)
        mean_len = sum(len(e) for e in exs) / len(exs)
        fpt = modeling.flops_per_token(n_params, config, mean_len)

        # Alternate the two, several times on a CPU, and keep each side's best run: on a shared
        # machine other work only ever slows a run down.
        runs = {"runtime": [], "baseline": []}
        for i in range(args.repeat or (5 if device == "cpu" else 1)):
            runs["runtime"].append(run_runtime(model, dataset, os.path.join(work, f"runtime-{i}"), args, extra))
            runs["baseline"].append(run_baseline(model, pairs, args, device))
        runtime, baseline = (max(r, key=lambda x: x["tokens_per_second"]) for r in runs.values())
        for name in runs:
            print(f"{name}: " + ", ".join(f"{r['tokens_per_second']:,.0f}" for r in runs[name]) + " tokens/s",
                  file=sys.stderr)
        for r in (runtime, baseline):
            r["mfu"] = r["tokens_per_second"] * fpt / peak if peak else None
        result = {
            "device": device, "model_parameters": n_params, "steps": args.steps, "batch_size": args.batch_size,
            "max_seq_len": args.max_seq_len, "mean_example_tokens": round(mean_len, 1),
            "flops_per_token": fpt, "peak_flops": peak, "peak_source": peak_source, "torch_threads": torch_threads,
            "runtime": runtime, "baseline": baseline,
            "runs_tokens_per_second": {k: [round(r["tokens_per_second"], 1) for r in v] for k, v in runs.items()},
            "speedup": runtime["tokens_per_second"] / baseline["tokens_per_second"],
        }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    print(f"\nruntime  {runtime['tokens_per_second']:>12,.0f} tokens/s  MFU {runtime['mfu'] or 0:.2%}\n"
          f"baseline {baseline['tokens_per_second']:>12,.0f} tokens/s  MFU {baseline['mfu'] or 0:.2%}\n"
          f"speedup  {result['speedup']:.2f}x", file=sys.stderr)


if __name__ == "__main__":
    main()
