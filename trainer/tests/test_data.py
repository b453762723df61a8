import json
import os

import pytest
import torch
from conftest import CHAT, REPO, SAMPLE, write_jsonl

from understudy_trainer import data
from understudy_trainer.errors import BadInput


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_sample_files_load():
    pairs, digest = data.load_pairs(SAMPLE)
    assert len(pairs) >= 200 and len(digest) == 64
    chat, _ = data.load_pairs(CHAT)
    multi = [p for p in chat if len(p.prompt) > 1]
    assert multi, "the chat sample has multi-turn records"


def test_messages_use_last_assistant_as_response(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"}, {"role": "user", "content": [{"type": "text", "text": "q2"}]},
        {"role": "assistant", "content": "a2"}]}])
    (pair,), _ = data.load_pairs(path)
    assert pair.response == "a2"
    assert [m["content"] for m in pair.prompt] == ["sys", "q1", "a1", "q2"]


@pytest.mark.parametrize("lines,message", [
    ([], "dataset is empty"),
    (["", "   "], "dataset is empty"),
    (['{"prompt":"a","response":"b"}', "{not json"], "line 2: not valid JSON"),
    (['{"prompt":"a","response":"b"}', '{"prompt":"a","response":"b"}', '{"prompt":"a"}'],
     'line 3: missing field "response"'),
    (['{"prompt":1,"response":"b"}'], 'field "prompt" must be a string'),
    (['["a","b"]'], "line 1: not a JSON object"),
    (['{"messages":[{"role":"user","content":"q"}]}'], "needs at least a prompt turn and an assistant turn"),
    (['{"messages":[{"role":"user","content":"q"},{"role":"user","content":"r"}]}'],
     "the last message must be a non-empty assistant turn"),
    (['{"messages":[{"role":"user"}]}'], 'missing field "content"'),
])
def test_bad_datasets(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    with pytest.raises(BadInput) as e:
        data.load_pairs(path)
    assert e.value.code == "invalid_dataset"
    assert message in e.value.message


def test_plain_format_masks_prompt_and_keeps_eos(tokenizer):
    f = data.Formatter(tokenizer)
    assert not f.use_template
    eos = tokenizer.eos_token_id
    pair = data.Pair(1, [{"role": "user", "content": "What is 2 plus 2?"}], "2 plus 2 is 4.")
    p, r = f.encode(pair)
    assert p == ids(tokenizer, "What is 2 plus 2?") + [eos]
    assert r == ids(tokenizer, "2 plus 2 is 4.") + [eos]
    ex = data.build_example(p, r, 64)
    assert ex.input_ids == p + r
    assert ex.labels == [-100] * len(p) + r
    assert ex.labels[-1] == eos  # the model must learn to stop
    assert ex.n_targets == len(r)


def test_multi_turn_plain_format_joins_turns_with_eos(tokenizer):
    f = data.Formatter(tokenizer)
    eos = tokenizer.eos_token_id
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"}]
    assert f.prompt_ids(msgs) == ids(tokenizer, "hi") + [eos] + ids(tokenizer, "hello") + [eos] + \
        ids(tokenizer, "bye") + [eos]


def test_prompt_truncated_from_left_response_never_cut():
    prompt, response = list(range(100, 120)), [7, 8, 9, 0]
    ex = data.build_example(prompt, response, 10)
    assert ex.input_ids == list(range(114, 120)) + response  # the prompt's end is kept
    assert ex.labels == [-100] * 6 + response
    assert data.build_example(prompt, list(range(10)), 10) is None  # does not fit: skipped
    assert data.build_example(prompt, list(range(9)), 10).input_ids == [119] + list(range(9))
    examples, skipped = data.make_examples([(prompt, [1, 2]), (prompt, list(range(12)))], 10)
    assert [e.pair_index for e in examples] == [0] and skipped == [1]


def test_chat_template_is_used_when_present(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|endoftext|>{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}")
    f = data.Formatter(tok)
    assert f.use_template
    msgs = [{"role": "user", "content": "What colour is snow?"}]
    p, r = f.encode(data.Pair(1, msgs, "Snow is usually white."))
    assert tok.decode(p) == "[user] What colour is snow?<|endoftext|>[assistant] "
    assert tok.decode(r) == "Snow is usually white.<|endoftext|>"
    assert r[-1] == tok.eos_token_id


def test_packing_restarts_positions_and_blocks_cross_attention():
    a = data.Example([1, 2, 3], [-100, 2, 3], 0)
    b = data.Example([4, 5], [-100, 5], 1)
    c = data.Example([6, 7, 8, 9, 10, 11], [-100, -100, 8, 9, 10, 11], 2)
    batch = data.collate([a, b, c], 8, 0, pack=True)
    # First-fit decreasing: c then b fill the first row, a goes to the second.
    assert batch["input_ids"].tolist() == [[6, 7, 8, 9, 10, 11, 4, 5], [1, 2, 3, 0, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 1], [0, 1, 2, 0, 0, 0, 0, 0]]
    assert batch["labels"][1].tolist() == [-100, 2, 3] + [-100] * 5
    full = data.block_causal_mask(batch["segments"])
    assert full.shape == (2, 1, 8, 8)
    mask = full[:, 0]
    assert not mask[0, 6:, :6].any()  # b never sees c
    assert mask[0, 6:, 6:].tolist() == [[True, False], [True, True]]
    assert mask[0, :6, :6].equal(torch.ones(6, 6, dtype=torch.bool).tril())
    for i in range(3, 8):  # padding attends only to itself
        assert mask[1, i].tolist() == [j == i for j in range(8)]
    assert batch["n_targets"] == a.n_targets + b.n_targets + c.n_targets == 2 + 1 + 4
    assert batch["n_tokens"] == 11


def test_unpacked_collate_pads_right():
    a = data.Example([1, 2, 3], [-100, 2, 3], 0)
    b = data.Example([4, 5], [-100, 5], 1)
    batch = data.collate([a, b], 8, 0, pack=False)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    assert "position_ids" not in batch


def test_split_and_order_are_deterministic():
    exs = [data.Example([i, i], [-100, i], i) for i in range(40)]
    tr1, ev1 = data.split(exs, 0.1, 3)
    tr2, ev2 = data.split(exs, 0.1, 3)
    assert [e.pair_index for e in ev1] == [e.pair_index for e in ev2] and len(ev1) == 4
    assert len(tr1) == 36 and not {e.pair_index for e in tr1} & {e.pair_index for e in ev1}
    assert data.epoch_order(10, 1, 0) == data.epoch_order(10, 1, 0) != data.epoch_order(10, 1, 1)


def test_sample_pairs_json_is_one_record_per_line():
    with open(SAMPLE, encoding="utf-8") as f:
        for line in f:
            assert set(json.loads(line)) == {"prompt", "response"}



EOT = "<|endoftext|>"
TURNS = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|endoftext|>{% endfor %}"
         "{% if add_generation_prompt %}[assistant] {% endif %}")


def text_ids(tok, text):
    """Ids of text with special-token strings taken as ordinary text."""
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def with_template(tokenizer, tmp_path, template, slow=False):
    from transformers import AutoTokenizer, GPT2Tokenizer

    tokenizer.save_pretrained(tmp_path)
    tok = GPT2Tokenizer.from_pretrained(tmp_path) if slow else AutoTokenizer.from_pretrained(tmp_path)
    tok.chat_template = template
    return tok


def test_special_token_text_in_plain_data_stays_text(tokenizer):
    f = data.Formatter(tokenizer)
    eos = tokenizer.eos_token_id
    q1, a1, q2 = f"What does {EOT} mean?", "A marker.", EOT
    msgs = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}, {"role": "user", "content": q2}]
    response = f"It ends a document:{EOT} and then"
    p, r = f.encode(data.Pair(1, msgs, response))
    assert len(text_ids(tokenizer, EOT)) > 1 and eos not in text_ids(tokenizer, EOT)
    assert p == text_ids(tokenizer, q1) + [eos] + text_ids(tokenizer, a1) + [eos] + text_ids(tokenizer, q2) + [eos]
    assert r == text_ids(tokenizer, response) + [eos]
    assert p.count(eos) == 3 and r.count(eos) == 1  # only the turn ends the formatter writes
    assert tokenizer.decode(r) == response + EOT


@pytest.mark.parametrize("slow", [False, True], ids=["fast", "slow"])
def test_special_token_text_in_chat_data_stays_text(tokenizer, tmp_path, slow):
    tok = with_template(tokenizer, tmp_path, TURNS, slow=slow)
    assert tok.is_fast is not slow
    f = data.Formatter(tok)
    assert f.use_template
    eos = tok.eos_token_id
    msgs = [{"role": "user", "content": f"Say {EOT} please"}]
    response = f"Here:{EOT} done."
    p, r = f.encode(data.Pair(1, msgs, response))
    # The template's own end of turn stays the eos token; the user's "<|endoftext|>" is text.
    assert p == ids(tok, "[user] Say ") + text_ids(tok, EOT) + ids(tok, " please") + [eos] + ids(tok, "[assistant] ")
    assert r == ids(tok, "Here:") + text_ids(tok, EOT) + ids(tok, " done.") + [eos]
    assert tok.decode(p) == f"[user] Say {EOT} please{EOT}[assistant] "
    assert tok.decode(r) == response + EOT


def test_chat_data_without_special_text_is_tokenized_as_the_template_does(tokenizer, tmp_path):
    tok = with_template(tokenizer, tmp_path, TURNS)
    f = data.Formatter(tok)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello < | > there"},
            {"role": "user", "content": "bye"}]
    assert f.prompt_ids(msgs) == list(tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True))


@pytest.mark.parametrize("slow", [False, True], ids=["fast", "slow"])
def test_special_token_text_next_to_template_tokens_and_trimmed_content(tokenizer, tmp_path, slow):
    template = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] | trim }}<|endoftext|>"
                "{% endfor %}{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}")
    tok = with_template(tokenizer, tmp_path, template, slow=slow)
    f = data.Formatter(tok)
    eos = tok.eos_token_id
    msgs = [{"role": "system", "content": f"  {EOT}  "}, {"role": "user", "content": f" hi {EOT}\n"},
            {"role": "assistant", "content": "ok"}, {"role": "user", "content": EOT}]
    p = f.prompt_ids(msgs)
    assert p.count(eos) == 2 * len(msgs) + 1  # the template's, and none of the content's
    assert tok.decode(p) == (f"{EOT}system\n{EOT}{EOT}{EOT}user\nhi {EOT}{EOT}{EOT}assistant\nok{EOT}"
                             f"{EOT}user\n{EOT}{EOT}{EOT}assistant\n")
    eos_at = [i for i, t in enumerate(p) if t == eos]
    assert eos_at[0] == 0 and eos_at[-1] == len(p) - 1 - len(ids(tok, "assistant\n"))
    r = f.response_ids(msgs, f"{EOT} sure {EOT}")
    assert r.count(eos) == 1 and r[-1] == eos
    assert tok.decode(r) == f"{EOT} sure {EOT}{EOT}"


@pytest.mark.parametrize("slow", [False, True], ids=["fast", "slow"])
def test_special_token_text_stays_text_when_the_template_rewrites_content(tokenizer, tmp_path, slow):
    template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | replace('a', 'A') }}<|endoftext|>"
                "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    tok = with_template(tokenizer, tmp_path, template, slow=slow)
    f = data.Formatter(tok)
    eos = tok.eos_token_id
    p, r = f.encode(data.Pair(1, [{"role": "user", "content": f"a {EOT} b"}], f"ok {EOT} bye"))
    assert p.count(eos) == 1 and p[-len(ids(tok, "[assistant] ")) - 1] == eos
    assert r.count(eos) == 1 and r[-1] == eos


def _vector_lines(name):
    path = os.path.join(REPO, name)
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    assert len(lines) >= 3, path
    return lines


# The shared definition of a valid record (testdata/dataset/README.md): the service's Go
# validator tests the same files, and both examples in the repository are accepted.
@pytest.mark.parametrize("name", ["testdata/dataset/valid.jsonl", "examples/sample-pairs.jsonl",
                                  "examples/sample-chat.jsonl"])
def test_shared_valid_records(name):
    for n, line in enumerate(_vector_lines(name), 1):
        data.parse_record(json.loads(line), n)


def test_shared_invalid_records():
    for n, line in enumerate(_vector_lines("testdata/dataset/invalid.jsonl"), 1):
        with pytest.raises(BadInput):
            data.parse_record(json.loads(line), n)
