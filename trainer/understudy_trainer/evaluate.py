"""Held-out evaluation: response-only loss and perplexity, and greedy generations scored for
stopping (eos) and similarity to the teacher's answer."""

import contextlib
import math

import torch

from . import data, metrics, modeling


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def perplexity(loss):
    return math.exp(min(loss, 80.0))


@torch.no_grad()
def eval_loss(model, examples, max_len, pad_id, device, amp_dtype, batch_size, stop=None):
    """Token-weighted mean loss over the response tokens of ``examples``."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(examples), batch_size):
            if stop is not None:
                stop.check()
            chunk = examples[i:i + batch_size]
            # The layout training used: flattened for a model on variable-length attention.
            batch = data.flatten(chunk) if modeling.attn_impl(model) == modeling.VARLEN else \
                data.collate(chunk, max_len, pad_id, True)
            with modeling.autocast(device, amp_dtype):
                loss, n = modeling.loss_sum(model, batch, device)
            total += float(loss)
            count += n
    finally:
        model.train(was_training)
    return total / max(count, 1)


# A pair may generate up to GEN_FACTOR x its reference's tokens (eos included) + GEN_EXTRA,
# within max_len: room to show whether the model stops, without spending long batches on
# models that never do.
GEN_FACTOR, GEN_EXTRA = 2, 8


def plan(encoded, max_len, eos):
    """For each (prompt ids, response ids): the prompt as training saw it (cut from the left
    so that prompt + response fit in max_len, data.build_example) and the pair's new-token
    budget, min(GEN_FACTOR * response + GEN_EXTRA, max_len - prompt). The budget is never below
    the response's own length, so a model that reproduces the reference can always stop."""
    out = []
    for p, r in encoded:
        ex = data.build_example(p, r, max_len)
        prompt = ex.input_ids[:len(ex.input_ids) - len(r)] if ex is not None else list(p[-1:])
        prompt = prompt or [eos]
        out.append((prompt, max(1, min(GEN_FACTOR * len(r) + GEN_EXTRA, max_len - len(prompt)))))
    return out


def batches(plans, max_len, batch_size):
    """Pair indices grouped for generation: sorted by budget, then prompt length, so that a
    batch's max_new_tokens and padding are close to each pair's own. A batch never asks for
    positions past max_len (longest prompt + largest budget), as training never used any."""
    order = sorted(range(len(plans)), key=lambda i: (plans[i][1], len(plans[i][0]), i))
    out, cur, width = [], [], 0
    for i in order:
        prompt, new = plans[i]
        # new is the largest budget so far: the order is by budget
        if cur and (len(cur) >= batch_size or max(width, len(prompt)) + new > max_len):
            out.append(cur)
            cur, width = [], 0
        cur.append(i)
        width = max(width, len(prompt))
    if cur:
        out.append(cur)
    return out


@torch.no_grad()
def generate(model, tokenizer, formatter, pairs, max_len, device, amp_dtype, batch_size, stop_ids, stop=None,
             encoded=None):
    """Greedy generations for ``pairs``, scored against their references.

    Each pair sees its prompt as training did and gets its own new-token budget (``plan``);
    pairs of similar budget and length share a left-padded batch (``batches``). ``encoded``,
    when given, is ``formatter.encode(pair)`` for each pair (the ids training used).

    Returns a dict; every value is None (``samples`` and ``generations`` empty) when there are
    no pairs:
      eos_rate: share of generations that produced a stop token within their budget;
      empty_rate: share whose decoded text (special tokens skipped) is empty or whitespace;
      mean_generated_tokens: mean number of tokens generated before the stop token (the stop
        token not counted; the whole budget when none came);
      chrf: corpus chrF against the references (metrics.chrf_corpus);
      rouge_l: mean of per-pair ROUGE-L F1 on normalised words (metrics.rouge_l);
      samples: the first five pairs, in pair order: prompt, generated, reference (each cut to
        200 characters) and ended;
      generations: per pair, in pair order: text, tokens, ended, max_new_tokens.
    """
    if not pairs:
        return {"eos_rate": None, "empty_rate": None, "mean_generated_tokens": None, "chrf": None,
                "rouge_l": None, "samples": [], "generations": []}
    if encoded is None:
        encoded = [formatter.encode(p) for p in pairs]
    if len(encoded) != len(pairs):
        raise ValueError("generate: encoded and pairs differ in length")
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else formatter.eos
    stop_ids = set(stop_ids)
    plans = plan(encoded, max_len, formatter.eos)
    results = [None] * len(pairs)
    try:
        for idx in batches(plans, max_len, batch_size):
            if stop is not None:
                stop.check()
            prompts = [plans[i][0] for i in idx]
            new = max(plans[i][1] for i in idx)
            width = max(len(p) for p in prompts)
            ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for r, p in enumerate(prompts):
                ids[r, width - len(p):] = torch.tensor(p)
                mask[r, width - len(p):] = 1
            # pad == eos makes transformers warn about right padding; the mask is left-padded.
            with modeling.autocast(device, amp_dtype), _quiet_transformers():
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new,
                    do_sample=False, num_beams=1, eos_token_id=sorted(stop_ids), pad_token_id=pad_id,
                )
            for r, i in enumerate(idx):
                budget = plans[i][1]
                gen = out[r, width:width + budget].tolist()  # the pair's own budget, whatever the batch's
                cut = next((k for k, t in enumerate(gen) if t in stop_ids), None)
                if cut is not None:
                    gen = gen[:cut]
                text = tokenizer.decode(gen, skip_special_tokens=True).strip()
                results[i] = {"text": text, "tokens": len(gen), "ended": cut is not None,
                              "max_new_tokens": budget}
    finally:
        model.train(was_training)
    return score(pairs, results)


def score(pairs, generations):
    """The metrics of ``generate`` from each pair's generation (``generations``, in pair
    order): how generations made on several ranks are scored together."""
    n = len(pairs)
    refs = [p.response.strip() for p in pairs]
    texts = [g["text"] for g in generations]
    samples = [{"prompt": pair.prompt[-1]["content"][-200:], "generated": g["text"][:200],
                "reference": ref[:200], "ended": g["ended"]}
               for pair, g, ref in list(zip(pairs, generations, refs))[:5]]
    return {
        "eos_rate": sum(g["ended"] for g in generations) / n,
        "empty_rate": sum(not t for t in texts) / n,
        "mean_generated_tokens": sum(g["tokens"] for g in generations) / n,
        "chrf": metrics.chrf_corpus(texts, refs),
        "rouge_l": sum(metrics.rouge_l(t, ref) for t, ref in zip(texts, refs)) / n,
        "samples": samples,
        "generations": generations,
    }
