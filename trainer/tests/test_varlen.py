"""Variable-length attention for packed examples (modeling.VARLEN, data.flatten).

On CPU the per-example reference path runs; the GPU kernel (FlashAttention 2 as built into
PyTorch) is checked by `make bench-gpu`'s packed-vs-alone check on the kernel it chose."""
import json
import os

import pytest
import torch
from conftest import SAMPLE, run_cli, train_args

from understudy_trainer import data, modeling


@pytest.fixture(scope="module")
def models(tiny_model, tokenizer):
    config = modeling.load_config(tiny_model)
    torch.manual_seed(0)
    dense = modeling.load_model(tiny_model, config, torch.float32)
    varlen = modeling.load_model(tiny_model, config, torch.float32)
    assert modeling.enable_varlen(varlen) and modeling.attn_impl(varlen) == modeling.VARLEN
    pairs, _ = data.load_pairs(SAMPLE)
    examples, _ = data.make_examples(data.encode_pairs(data.Formatter(tokenizer), pairs[:24]), 64)
    return dense, varlen, examples, tokenizer.eos_token_id


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss, n = modeling.loss_sum(model, batch, "cpu")
    loss.backward()
    return float(loss.detach()), n, torch.cat([p.grad.flatten() for p in model.parameters()])


def test_flatten_lays_examples_back_to_back():
    a = data.Example([5, 6, 7], [data.IGNORE, 6, 7], 0)
    b = data.Example([8, 9], [8, 9], 1)  # no prompt: its first label must not become a target
    batch = data.flatten([a, b])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[data.IGNORE, 6, 7, data.IGNORE, 9]]
    assert batch["cu_seqlens"].dtype == torch.int32 and batch["cu_seqlens"].tolist() == [0, 3, 5]
    assert batch["max_seqlen"] == 3 and batch["n_tokens"] == 5 and batch["n_targets"] == a.n_targets + b.n_targets == 3
    # The rows layout drops the same label, so the two layouts train on the same targets.
    packed = data.collate([a, b], 8, 0, True)
    assert sorted(t for t in packed["labels"].flatten().tolist() if t != data.IGNORE) == [6, 7, 9]


def test_bounds_ride_in_the_mask_without_a_copy():
    cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    mask = modeling.varlen_bounds(cu, 3)
    assert mask.shape == (1, 1, 3, 3) and mask.dtype == torch.int32 and mask.stride(2) == 0
    assert mask[0, 0, 0].tolist() == [0, 3, 5] and mask.data_ptr() == cu.data_ptr()


def test_flattened_loss_and_gradients_equal_the_masked_rows(models):
    dense, varlen, examples, pad = models
    rows = data.collate(examples[:16], 64, pad, True)
    flat = data.flatten(examples[:16])
    assert rows["input_ids"].shape[0] > 1 and flat["input_ids"].shape[0] == 1
    l1, n1, g1 = _loss_and_grads(dense, rows)
    l2, n2, g2 = _loss_and_grads(varlen, flat)
    assert n1 == n2 == flat["n_targets"]
    assert l2 == pytest.approx(l1, rel=1e-5)
    # fp32 sums in another order: the same gradient to a few parts in a million.
    assert float((g2 - g1).norm() / g1.norm()) < 1e-5


@torch.no_grad()
def test_flattened_examples_do_not_see_each_other(models):
    _, varlen, examples, _ = models
    a, b = examples[0], examples[1]
    a2 = data.Example([(t + 5) % 200 for t in a.input_ids], a.labels, a.pair_index)

    def loss(*exs):
        return float(modeling.loss_sum(varlen, data.flatten(list(exs)), "cpu")[0])

    b_alone = loss(b)
    assert loss(a, b) - loss(a) == pytest.approx(b_alone, rel=1e-4)
    assert loss(a2, b) - loss(a2) == pytest.approx(b_alone, rel=1e-4)


def test_switched_model_runs_other_batches_as_sdpa(models):
    dense, varlen, examples, pad = models
    for batch in (data.collate(examples[:8], 64, pad, False), data.collate(examples[:8], 64, pad, True)):
        assert _loss_and_grads(varlen, batch)[0] == pytest.approx(_loss_and_grads(dense, batch)[0], rel=1e-6)
    # Generation with left padding and a cache, as evaluation runs it.
    short, long = examples[0].input_ids[:5], examples[1].input_ids[:12]
    ids = torch.tensor([[pad] * (len(long) - len(short)) + short, long])
    mask = torch.tensor([[0] * (len(long) - len(short)) + [1] * len(short), [1] * len(long)])
    enc = {"input_ids": ids, "attention_mask": mask}
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=pad)
    dense.eval(), varlen.eval()
    try:
        assert torch.equal(varlen.generate(**enc, **kw), dense.generate(**enc, **kw))
    finally:
        dense.train(), varlen.train()


def test_a_flattened_batch_needs_the_switched_model(models):
    dense, _, examples, _ = models
    with pytest.raises(ValueError, match="variable-length"):
        modeling.loss_sum(dense, data.flatten(examples[:2]), "cpu")


def test_no_kernel_on_cpu_so_auto_keeps_the_mask():
    assert modeling.varlen_kernel("cpu", torch.bfloat16, 64) is None
    assert modeling.varlen_kernel("cuda", torch.float32, 64) is None


def _run(model, tmp, *extra):
    r = run_cli(train_args(model, SAMPLE, str(tmp), "--eval-fraction", "0.2", "--log-every-steps", "1",
                           "--max-steps", "4", "--learning-rate", "0.003", "--max-seq-len", "64", *extra))
    assert r.code == 0, r.lines[-1]
    with open(os.path.join(tmp, "out", "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    evals = [e["eval_loss"] for e in r.of("eval")]
    return [e["loss"] for e in r.of("step")], evals, manifest["training"]["attention"]


def test_varlen_attention_does_not_change_training(tiny_model, tmp_path, monkeypatch):
    masked, masked_eval, how = _run(tiny_model, tmp_path / "a", "--batch-size", "8")
    assert how == "sdpa (block-causal mask)"  # auto on a CPU
    varlen, varlen_eval, how = _run(tiny_model, tmp_path / "b", "--batch-size", "8", "--attention", "varlen")
    assert how == "varlen (per-example reference)"
    assert varlen == pytest.approx(masked, rel=2e-4) and varlen_eval == pytest.approx(masked_eval, rel=2e-4)
    # Micro-batches by tokens, about two examples each, cut the same step into several rows.
    monkeypatch.setenv("UNDERSTUDY_MICRO_BATCH_TOKENS", "60")
    assert _run(tiny_model, tmp_path / "c", "--batch-size", "8", "--attention", "varlen")[0] == pytest.approx(masked, rel=2e-4)


def test_varlen_attention_needs_packing(tiny_model, tmp_path):
    r = run_cli(train_args(tiny_model, SAMPLE, str(tmp_path), "--max-steps", "1", "--attention", "varlen", "--no-packing"))
    assert r.code == 2 and r.last["code"] == "invalid_hyperparameters" and "packing" in r.last["message"]


def test_attention_it_cannot_reproduce_keeps_sdpa(tiny_model):
    config = modeling.load_config(tiny_model)
    assert modeling._plain_causal_attention(config)
    for attr, value in (("sliding_window", 512), ("layer_types", ["full_attention", "sliding_attention"]),
                        ("attn_logit_softcapping", 50.0), ("alibi", True)):
        c = modeling.load_config(tiny_model)
        setattr(c, attr, value)
        assert not modeling._plain_causal_attention(c), attr
        model = modeling.load_model(tiny_model, c, torch.float32)
        assert not modeling.enable_varlen(model) and modeling.attn_impl(model) == "sdpa", attr


@pytest.mark.parametrize("kernel, agrees", [
    ("faithful", True),     # what FlashAttention computes: causal within each example
    ("leaky", False),       # causal over the whole row: examples see each other
    ("broken", False),      # a build whose kernel raises
])
def test_the_kernel_is_checked_before_it_is_chosen(monkeypatch, kernel, agrees):
    def faithful(q, k, v, cu, max_seqlen, dropout, scale):
        return modeling._segment_attention(q, k, v, cu, dropout, scale)

    def leaky(q, k, v, cu, max_seqlen, dropout, scale):
        whole = torch.tensor([0, q.shape[0]], dtype=torch.int32)
        return modeling._segment_attention(q, k, v, whole, dropout, scale)

    def broken(*args):
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer")

    monkeypatch.setattr(modeling, "_flash_forward", {"faithful": faithful, "leaky": leaky, "broken": broken}[kernel])
    modeling._flash_agrees.cache_clear()
    try:
        assert modeling._flash_agrees(torch.float32, 16, device="cpu") is agrees
    finally:
        modeling._flash_agrees.cache_clear()
