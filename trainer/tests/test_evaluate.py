import pytest
import torch
from conftest import SAMPLE

from understudy_trainer import data, evaluate, metrics


class FakeModel:
    """Stands in for a causal LM's ``generate``: each row continues with what ``script`` returns
    for its (unpadded) prompt, cut to max_new_tokens and padded after a stop token, as
    transformers does. Records every call."""

    def __init__(self, script):
        self.script = script
        self.calls = []
        self.training = True

    def eval(self):
        self.training = False
        return self

    def train(self, mode=True):
        self.training = mode
        return self

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, **kw):
        prompts = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        self.calls.append({"prompts": prompts, "max_new_tokens": max_new_tokens, "training": self.training})
        rows = []
        for p in prompts:
            gen = list(self.script(p))[:max_new_tokens]
            stop = next((k for k, t in enumerate(gen) if t in eos_token_id), None)
            if stop is not None:
                gen = gen[:stop + 1] + [pad_token_id] * (len(gen) - stop - 1)
            rows.append(gen)
        width = max(len(g) for g in rows)
        out = [row.tolist() + g + [pad_token_id] * (width - len(g)) for row, g in zip(input_ids, rows)]
        return torch.tensor(out, dtype=torch.long)

    def fed(self):
        """Every prompt generate saw, in call order."""
        return [p for c in self.calls for p in c["prompts"]]


def ids(tok, text):
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def pair(prompt, response, line=1):
    return data.Pair(line, [{"role": "user", "content": prompt}], response)


def run(model, tokenizer, pairs, max_len=64, batch_size=8, **kw):
    f = data.Formatter(tokenizer)
    return evaluate.generate(model, tokenizer, f, pairs, max_len, "cpu", None, batch_size, {f.eos}, **kw)


def echo_reference(tokenizer, pairs, max_len):
    """A model that answers each prompt, as training saw it, with its pair's reference and eos
    (and fails on any other prompt)."""
    f = data.Formatter(tokenizer)
    answers = {}
    for p in pairs:
        prompt, response = f.encode(p)
        answers[tuple(data.build_example(prompt, response, max_len).input_ids[:-len(response)])] = response
    return FakeModel(lambda prompt: answers[tuple(prompt)])


def test_no_pairs_gives_nothing(tokenizer):
    model = FakeModel(lambda p: [])
    result = run(model, tokenizer, [])
    assert result == {"eos_rate": None, "empty_rate": None, "mean_generated_tokens": None, "chrf": None,
                      "rouge_l": None, "samples": [], "generations": []}
    assert not model.calls


def test_one_long_reference_does_not_shorten_other_prompts(tokenizer):
    short = [pair(f"Question number {i}: what is the colour of the sky at noon?", f"Blue, {i}.", i)
             for i in range(3)]
    long_answer = " ".join(["word"] * 200)
    long = pair("Tell me a long story about the sea and its boats.", long_answer, 9)
    pairs = short[:2] + [long] + short[2:]
    f = data.Formatter(tokenizer)
    enc = [f.encode(p) for p in pairs]
    max_len = max(len(r) for _, r in enc) + 4  # the long answer leaves 4 prompt tokens
    assert all(len(p) + len(r) <= max_len for p, r in enc[:2] + enc[3:])
    model = echo_reference(tokenizer, pairs, max_len)
    result = run(model, tokenizer, pairs, max_len=max_len)

    fed = {tuple(p) for p in model.fed()}
    for p, r in enc:
        want = data.build_example(p, r, max_len).input_ids[:-len(r)]  # the prompt as training saw it
        assert tuple(want) in fed
    # The short pairs keep their whole prompts; the long one is cut from the left, as in training.
    for p, _ in enc[:2] + enc[3:]:
        assert tuple(p) in fed
    assert tuple(enc[2][0][-4:]) in fed and tuple(enc[2][0]) not in fed
    # Each budget comes from the pair's own reference.
    for (p, r), g in zip(enc, result["generations"]):
        assert g["max_new_tokens"] == min(2 * len(r) + 8, max_len - min(len(p), max_len - len(r)))
    assert result["generations"][0]["max_new_tokens"] == 2 * len(enc[0][1]) + 8
    # Every reference is reproduced and ends: nothing was cut short.
    assert result["eos_rate"] == 1.0 and result["empty_rate"] == 0.0
    assert result["chrf"] == pytest.approx(1.0) and result["rouge_l"] == pytest.approx(1.0)
    assert [g["text"] for g in result["generations"]] == [p.response for p in pairs]


def test_pairs_are_grouped_by_budget_and_results_keep_pair_order(tokenizer):
    # Pairs 0 and 3 have long references, the others short ones; grouping by budget reorders
    # the pairs, the results must not be.
    pairs = [pair("alpha?", "one two three four five six seven eight nine ten", 1),
             pair("bravo?", "yes", 2),
             pair("charlie?", "no", 3),
             pair("delta?", "one two three four five six seven eight nine ten eleven", 4),
             pair("echo?", "ok", 5)]
    model = echo_reference(tokenizer, pairs, 128)
    result = run(model, tokenizer, pairs, max_len=128, batch_size=3)

    f = data.Formatter(tokenizer)
    budgets = [2 * len(f.response_ids(p.prompt, p.response)) + 8 for p in pairs]
    short, long = [1, 2, 4], [0, 3]
    assert max(budgets[i] for i in short) < min(budgets[i] for i in long)
    first, second = model.calls
    assert {tuple(p) for p in first["prompts"]} == {tuple(f.prompt_ids(pairs[i].prompt)) for i in short}
    assert first["max_new_tokens"] == max(budgets[i] for i in short)
    assert {tuple(p) for p in second["prompts"]} == {tuple(f.prompt_ids(pairs[i].prompt)) for i in long}
    assert second["max_new_tokens"] == max(budgets[i] for i in long)
    assert [g["max_new_tokens"] for g in result["generations"]] == budgets
    assert [g["text"] for g in result["generations"]] == [p.response for p in pairs]
    assert [s["prompt"] for s in result["samples"]] == [p.prompt[-1]["content"] for p in pairs]
    assert [s["reference"] for s in result["samples"]] == [p.response for p in pairs]


def test_batches_group_by_budget_and_stay_within_max_len():
    plans = [([1] * 5, 10), ([1] * 5, 50), ([1] * 5, 12), ([1] * 5, 11)]
    assert evaluate.batches(plans, 100, 2) == [[0, 3], [2, 1]]
    # 90 + 80 > 100: these two may not share a batch, however large the batch.
    assert evaluate.batches([([1] * 90, 10), ([1] * 10, 80)], 100, 8) == [[0], [1]]
    assert evaluate.batches([([1] * 50, 10), ([1] * 10, 50)], 100, 8) == [[0, 1]]


def test_plan_keeps_training_prompt_and_caps_budget():
    prompt, response = list(range(100, 130)), [7, 8, 9, 0]
    (p, new), = evaluate.plan([(prompt, response)], 20, 0)
    assert p == prompt[-16:] == data.build_example(prompt, response, 20).input_ids[:-4]
    assert new == 4  # 2 * 4 + 8 = 16, capped to 20 - 16: still room for the whole reference
    (p, new), = evaluate.plan([(prompt[:3], response)], 20, 0)
    assert p == prompt[:3] and new == 16


def test_empty_rate_eos_rate_and_mean_length(tokenizer):
    f = data.Formatter(tokenizer)
    eos = f.eos
    space = ids(tokenizer, " ")
    hello = ids(tokenizer, "hello there")
    never = ids(tokenizer, "la")[:1]
    pairs = [pair("first?", "something to say here", 1), pair("second?", "something to say here", 2),
             pair("third?", "something to say here", 3), pair("fourth?", "x", 4)]
    replies = {
        tuple(f.prompt_ids(pairs[0].prompt)): [eos],  # stops at once: empty
        tuple(f.prompt_ids(pairs[1].prompt)): space * 2 + [eos],  # whitespace only: empty
        tuple(f.prompt_ids(pairs[2].prompt)): hello + [eos],
        tuple(f.prompt_ids(pairs[3].prompt)): never * 500,  # never stops
    }
    model = FakeModel(lambda p: replies[tuple(p)])
    result = run(model, tokenizer, pairs, max_len=128, batch_size=4)
    assert len(model.calls) == 1  # one batch, whose max_new_tokens exceeds the last pair's budget
    budget = 2 * len(f.response_ids(pairs[3].prompt, pairs[3].response)) + 8
    assert model.calls[0]["max_new_tokens"] > budget
    g = result["generations"]
    assert [x["ended"] for x in g] == [True, True, True, False]
    assert [x["tokens"] for x in g] == [0, 2 * len(space), len(hello), budget]  # the pair's own budget
    assert result["eos_rate"] == pytest.approx(3 / 4)
    assert result["empty_rate"] == pytest.approx(2 / 4)
    assert result["mean_generated_tokens"] == pytest.approx((0 + 2 * len(space) + len(hello) + budget) / 4)
    texts = ["", "", "hello there", tokenizer.decode(never * budget)]
    assert [x["text"] for x in g] == texts
    refs = [p.response for p in pairs]
    assert result["chrf"] == pytest.approx(metrics.chrf_corpus(texts, refs))
    assert result["chrf"] != pytest.approx(metrics.chrf_sentence_mean(texts, refs))
    assert result["rouge_l"] == pytest.approx(sum(metrics.rouge_l(t, r) for t, r in zip(texts, refs)) / 4)
    assert not model.calls[0]["training"] and model.training  # eval mode while generating, then restored
    assert [s["ended"] for s in result["samples"]] == [True, True, True, False]


def test_encoded_pairs_are_what_generation_sees(tokenizer):
    pairs = [pair("alpha?", "one"), pair("bravo?", "two")]
    encoded = [([5, 6, 7], [8, 0]), ([9, 10], [11, 12, 0])]
    model = FakeModel(lambda p: [tokenizer.eos_token_id])
    run(model, tokenizer, pairs, encoded=encoded)
    assert sorted(model.fed()) == [[5, 6, 7], [9, 10]]
    with pytest.raises(ValueError):
        run(model, tokenizer, pairs, encoded=encoded[:1])


class Recording:
    """Wraps a real model, recording what generate is given."""

    def __init__(self, model):
        self.model, self.calls = model, []

    @property
    def training(self):
        return self.model.training

    def eval(self):
        return self.model.eval()

    def train(self, mode=True):
        return self.model.train(mode)

    def generate(self, **kw):
        self.calls.append(kw)
        return self.model.generate(**kw)


def test_real_model_generation(tiny_model, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    max_len = 40
    f = data.Formatter(tokenizer)
    pairs = [p for p in data.load_pairs(SAMPLE)[0] if len(f.encode(p)[1]) < max_len][:12]
    enc = [f.encode(p) for p in pairs]
    rec = Recording(model)
    result = run(rec, tokenizer, pairs, max_len=max_len, batch_size=4, stop=None)
    assert set(result) == {"eos_rate", "empty_rate", "mean_generated_tokens", "chrf", "rouge_l", "samples",
                           "generations"}
    assert len(result["generations"]) == 12 and len(result["samples"]) == 5
    fed = []
    for kw in rec.calls:
        width = kw["input_ids"].shape[1]
        assert width + kw["max_new_tokens"] <= max_len
        fed += [row[mask.bool()].tolist() for row, mask in zip(kw["input_ids"], kw["attention_mask"])]
    want = [data.build_example(p, r, max_len).input_ids[:-len(r)] for p, r in enc]
    assert sorted(fed) == sorted(want)
    for g, (p, r) in zip(result["generations"], enc):
        assert 0 <= g["tokens"] <= g["max_new_tokens"]
    assert 0.0 <= result["chrf"] <= 1.0 and 0.0 <= result["rouge_l"] <= 1.0
    assert 0.0 <= result["empty_rate"] <= 1.0 and 0.0 <= result["eos_rate"] <= 1.0
