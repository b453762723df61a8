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
            batch = data.collate(examples[i:i + batch_size], max_len, pad_id, True)
            with modeling.autocast(device, amp_dtype):
                loss, n = modeling.loss_sum(model, batch, device)
            total += float(loss)
            count += n
    finally:
        model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def generate(model, tokenizer, formatter, pairs, max_len, device, amp_dtype, batch_size, stop_ids,
             max_new_tokens, stop=None):
    """Greedy, left-padded batches. Returns (eos_rate, chrf, rouge_l, samples)."""
    if not pairs:
        return None, None, None, []
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else formatter.eos
    stop_ids = set(stop_ids)
    budget = max(1, max_len - 1)
    ended, chrfs, rouges, samples = 0, [], [], []
    try:
        for i in range(0, len(pairs), batch_size):
            if stop is not None:
                stop.check()
            chunk = pairs[i:i + batch_size]
            new = min(max_new_tokens, budget)
            prompts = [formatter.prompt_ids(p.prompt)[-(max_len - new):] for p in chunk]
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
            for r, pair in enumerate(chunk):
                gen = out[r, width:].tolist()
                cut = next((k for k, t in enumerate(gen) if t in stop_ids), None)
                if cut is not None:
                    ended += 1
                    gen = gen[:cut]
                text = tokenizer.decode(gen, skip_special_tokens=True).strip()
                ref = pair.response.strip()
                chrfs.append(metrics.chrf(text, ref))
                rouges.append(metrics.rouge_l(text, ref))
                if len(samples) < 5:
                    samples.append({"prompt": pair.prompt[-1]["content"][-200:], "generated": text[:200],
                                    "reference": ref[:200], "ended": cut is not None})
    finally:
        model.train(was_training)
    n = len(pairs)
    return ended / n, sum(chrfs) / n, sum(rouges) / n, samples
