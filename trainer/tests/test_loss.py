import pytest
import torch
from conftest import SAMPLE, run_cli, train_args

from understudy_trainer import data, modeling


@pytest.fixture(scope="module")
def model_and_examples(tiny_model, tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    pairs, _ = data.load_pairs(SAMPLE)
    f = data.Formatter(tokenizer)
    examples, _ = data.make_examples(data.encode_pairs(f, pairs[:24]), 64)
    return model, examples, tokenizer.eos_token_id


@torch.no_grad()
def test_response_loss_matches_transformers_own_loss(model_and_examples):
    model, examples, pad = model_and_examples
    ex = examples[0]
    batch = data.collate([ex], 64, pad, pack=False)
    loss, n = modeling.loss_sum(model, batch, "cpu")
    ref = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    assert n == ex.n_targets
    assert float(loss) / n == pytest.approx(float(ref), rel=1e-5)


@torch.no_grad()
def test_packed_loss_equals_unpacked(model_and_examples):
    model, examples, pad = model_and_examples
    packed = data.collate(examples[:16], 64, pad, pack=True)
    unpacked = data.collate(examples[:16], 64, pad, pack=False)
    assert packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]  # packing did pack
    lp, n1 = modeling.loss_sum(model, packed, "cpu")
    lu, n2 = modeling.loss_sum(model, unpacked, "cpu")
    assert n1 == n2 == sum(e.n_targets for e in examples[:16])
    assert float(lp) == pytest.approx(float(lu), rel=1e-5)


@torch.no_grad()
def test_packed_examples_do_not_see_each_other(model_and_examples):
    model, examples, pad = model_and_examples
    a, b = examples[0], examples[1]
    a2 = data.Example([(t + 5) % 200 for t in a.input_ids], a.labels, a.pair_index)

    def loss(*exs):
        return float(modeling.loss_sum(model, data.collate(list(exs), 64, pad, pack=True), "cpu")[0])

    b_alone = loss(b)
    assert loss(a, b) - loss(a) == pytest.approx(b_alone, rel=1e-4)
    assert loss(a2, b) - loss(a2) == pytest.approx(b_alone, rel=1e-4)


def _step_losses(model, tmp, *extra):
    r = run_cli(train_args(model, SAMPLE, str(tmp), "--eval-fraction", "0", "--log-every-steps", "1",
                           "--max-steps", "4", "--learning-rate", "0.003", "--max-seq-len", "64", *extra))
    assert r.code == 0, r.lines[-1]
    return [e["loss"] for e in r.of("step")]


def test_gradient_accumulation_invariance(tiny_model, tmp_path):
    whole = _step_losses(tiny_model, tmp_path / "a", "--batch-size", "16", "--grad-accum", "1")
    accumulated = _step_losses(tiny_model, tmp_path / "b", "--batch-size", "4", "--grad-accum", "4")
    assert len(whole) == len(accumulated) == 4
    assert whole[-1] < whole[0]
    assert accumulated == pytest.approx(whole, rel=2e-4)


def test_packing_does_not_change_training(tiny_model, tmp_path):
    packed = _step_losses(tiny_model, tmp_path / "a", "--batch-size", "8")
    padded = _step_losses(tiny_model, tmp_path / "b", "--batch-size", "8", "--no-packing")
    assert packed == pytest.approx(padded, rel=2e-4)


def test_token_sized_micro_batches_do_not_change_training(tiny_model, tmp_path, monkeypatch):
    whole = _step_losses(tiny_model, tmp_path / "a", "--batch-size", "16")
    whole_padded = _step_losses(tiny_model, tmp_path / "b", "--batch-size", "16", "--no-packing")
    # About two examples per micro-batch: a step of 16 runs as several.
    monkeypatch.setenv("UNDERSTUDY_MICRO_BATCH_TOKENS", "60")
    assert _step_losses(tiny_model, tmp_path / "c", "--batch-size", "16") == pytest.approx(whole, rel=2e-4)
    assert _step_losses(tiny_model, tmp_path / "d", "--batch-size", "16", "--no-packing") == pytest.approx(whole_padded, rel=2e-4)


def test_micro_token_budget_must_be_a_count(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("UNDERSTUDY_MICRO_BATCH_TOKENS", "lots")
    r = run_cli(train_args(tiny_model, SAMPLE, str(tmp_path), "--max-steps", "1"))
    assert r.code == 2 and r.last["code"] == "invalid_hyperparameters" and "UNDERSTUDY_MICRO_BATCH_TOKENS" in r.last["message"]
