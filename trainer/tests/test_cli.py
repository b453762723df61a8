import io
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import SAMPLE, TRAINER, run_cli, train_args, write_jsonl

from understudy_trainer import checkpoint, progress


def assert_bad_input(r, code, tmp, text=None):
    assert r.code == 2
    assert r.last["event"] == "error" and r.last["code"] == code
    if text:
        assert text in r.last["message"]
    assert len(r.events) == 1 and not r.ignored
    assert not os.path.exists(os.path.join(tmp, "out"))
    assert not os.path.exists(os.path.join(tmp, "ckpt"))


@pytest.mark.parametrize("lines,text", [
    ([], "dataset is empty"),
    (['{"prompt":"a","response":"b"}', "{oops"], "line 2: not valid JSON"),
    (['{"prompt":"a","response":"b"}', '{"prompt":"a"}'], 'line 2: missing field "response"'),
])
def test_bad_dataset(tiny_model, tmp_path, lines, text):
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    assert_bad_input(run_cli(train_args(tiny_model, path, str(tmp_path))), "invalid_dataset", str(tmp_path), text)


def test_missing_dataset_file(tiny_model, tmp_path):
    r = run_cli(train_args(tiny_model, str(tmp_path / "nope.jsonl"), str(tmp_path)))
    assert_bad_input(r, "invalid_dataset", str(tmp_path), "not found")


def test_every_response_too_long(tiny_model, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "response": "word " * 100}])
    r = run_cli(train_args(tiny_model, path, str(tmp_path), "--max-seq-len", "16"))
    assert_bad_input(r, "invalid_dataset", str(tmp_path), "too long")


def test_model_path_does_not_exist(tmp_path):
    r = run_cli(train_args(str(tmp_path / "no-such-model"), SAMPLE, str(tmp_path)))
    assert_bad_input(r, "invalid_model", str(tmp_path), "does not exist")


def test_model_that_is_not_a_causal_lm(tmp_path):
    from transformers import DistilBertConfig

    path = str(tmp_path / "distilbert")
    DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64).save_pretrained(path)
    r = run_cli(train_args(path, SAMPLE, str(tmp_path)))
    assert_bad_input(r, "invalid_model", str(tmp_path), "not a causal language model")


def test_model_directory_without_config(tmp_path):
    os.makedirs(tmp_path / "empty-model")
    r = run_cli(train_args(str(tmp_path / "empty-model"), SAMPLE, str(tmp_path)))
    assert_bad_input(r, "invalid_model", str(tmp_path), "config.json")


@pytest.mark.parametrize("extra,text", [
    (["--hyperparameters-json", '{"epochs": 0}'], "epochs"),
    (["--hyperparameters-json", '{"learning_rate": 0}'], "learning_rate"),
    (["--hyperparameters-json", '{"batch_size": 2.5}'], "batch_size"),
    (["--hyperparameters-json", '{"warmup": 3}'], "unknown hyperparameter"),
    (["--hyperparameters-json", "{nope"], "not valid JSON"),
    (["--max-seq-len", "100000"], "context"),
    (["--epochs", "101"], "maximum"),
])
def test_bad_hyperparameters(tiny_model, tmp_path, extra, text):
    r = run_cli(train_args(tiny_model, SAMPLE, str(tmp_path), *extra))
    assert_bad_input(r, "invalid_hyperparameters", str(tmp_path), text)


def test_schema_shape_is_what_the_go_api_reads():
    with open(os.path.join(TRAINER, "understudy_trainer", "hparams_schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    assert set(schema) == {"epochs", "learning_rate", "batch_size", "max_seq_len"}
    for rule in schema.values():
        assert rule["type"] in ("integer", "number")
        assert set(rule) <= {"type", "minimum", "maximum", "exclusiveMinimum"}


def test_learnable_run_improves_and_output_loads(tiny_model, tmp_path):
    r = run_cli(train_args(tiny_model, SAMPLE, str(tmp_path), "--resume", "--eval-fraction", "0.1",
                           "--eval-generations", "16",
                           "--hyperparameters-json", '{"epochs": 5, "learning_rate": 0.004, "batch_size": 16}'))
    assert r.code == 0, r.lines[-1]
    assert not r.ignored
    kinds = [e["event"] for e in r.events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    start = r.events[0]
    assert start["resumed_from_step"] == 0 and start["pairs_used"] == 300 and start["eval_examples"] == 30
    steps = r.of("step")
    assert steps[-1]["step"] == start["total_steps"]
    before, after = r.of("eval")
    assert (before["phase"], after["phase"]) == ("before", "after")
    m = r.last["metrics"]
    assert m["eval_loss_after"] < m["eval_loss_before"] - 2.0
    assert m["eos_rate"] > m["eos_rate_before"] + 0.5
    assert m["chrf"] > m["chrf_before"]
    assert m["train_tokens"] > 0 and m["train_seconds"] > 0

    out = str(tmp_path / "out")
    files = {f["path"]: f for f in r.last["files"]}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "manifest.json"} <= set(files)
    from understudy_trainer.train import sha256_file

    for name, f in files.items():
        assert sha256_file(os.path.join(out, name)) == f["sha256"]
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    assert manifest["base_model"] == tiny_model
    assert manifest["pairs"] == {"used": 300, "skipped": 0, "train": 270, "eval": 30}
    assert manifest["hyperparameters"]["epochs"] == 5 and manifest["versions"]["torch"]
    assert manifest["metrics"] == m
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = tok("What is the capital of France?", return_tensors="pt")["input_ids"]
    import torch

    prompt = torch.cat([prompt, torch.tensor([[tok.eos_token_id]])], dim=1)
    gen = model.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(gen[0, prompt.shape[1]:], skip_special_tokens=True)
    assert text.startswith("The capital of")
    assert gen[0, -1].item() == tok.eos_token_id


class _SigtermAfter(io.StringIO):
    """Sends this process SIGTERM once the given step has been reported."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def write(self, s):
        n = super().write(s)
        ev, _ = progress.parse_line(s)
        if ev and ev["event"] == "step" and ev["step"] == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
        return n


def test_sigterm_writes_checkpoint_and_exits_75(tiny_model, tmp_path):
    args = train_args(tiny_model, SAMPLE, str(tmp_path), "--resume", "--eval-fraction", "0", "--log-every-steps",
                      "1", "--max-seq-len", "64", "--batch-size", "4", "--checkpoint-every-seconds", "0")
    r = run_cli(args, stream=_SigtermAfter(3), install_signals=True)
    assert r.code == 75
    assert r.last["event"] == "error" and r.last["code"] == "preempted"
    (ck,) = r.of("checkpoint")
    assert ck == {**ck, "step": 3, "reason": "preempted", "path": "step-00000003"}
    assert [s for s, _ in checkpoint.list_steps(str(tmp_path / "ckpt"))] == [3]
    assert not os.path.exists(tmp_path / "out")

    again = run_cli(args + ["--max-steps", "5"])
    # A different schedule is a different run: it starts afresh rather than resume wrongly.
    assert again.code == 0 and again.of("start")[0]["resumed_from_step"] == 0
    assert any(e["event"] == "log" and "afresh" in e["message"] for e in again.events)


def test_sigkill_then_resume_reproduces_the_loss_curve(tiny_model_dropout, tmp_path):
    def args(d):
        return train_args(tiny_model_dropout, SAMPLE, str(tmp_path / d), "--resume", "--eval-fraction", "0",
                          "--log-every-steps", "1", "--checkpoint-every-steps", "1", "--max-steps", "10",
                          "--batch-size", "8", "--max-seq-len", "64", "--learning-rate", "0.003", "--seed", "5")

    reference = run_cli(args("ref"))
    assert reference.code == 0
    ref_losses = {e["step"]: e["loss"] for e in reference.of("step")}
    assert len(ref_losses) == 10

    env = dict(os.environ, PYTHONPATH=TRAINER)
    proc = subprocess.Popen([sys.executable, "-m", "understudy_trainer", *args("killed")], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    first = {}
    try:
        for line in proc.stdout:
            ev, reason = progress.parse_line(line)
            assert ev is not None, f"stdout carried a non-protocol line: {line!r} ({reason})"
            if ev["event"] == "step":
                first[ev["step"]] = ev["loss"]
                if ev["step"] >= 5:
                    proc.send_signal(signal.SIGKILL)
                    break
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and max(first) < 10

    resumed = run_cli(args("killed"))
    assert resumed.code == 0, resumed.lines[-1]
    start = resumed.events[0]["resumed_from_step"]
    assert 3 <= start <= max(first)
    losses = {s: v for s, v in first.items() if s <= start}
    losses.update({e["step"]: e["loss"] for e in resumed.of("step")})
    assert sorted(losses) == list(range(1, 11))
    for s in range(1, 11):
        assert losses[s] == pytest.approx(ref_losses[s], rel=1e-5), s
    assert [s for s, _ in checkpoint.list_steps(str(tmp_path / "killed" / "ckpt"))][-1] == 10
    assert len(checkpoint.list_steps(str(tmp_path / "killed" / "ckpt"))) == 2


def test_lora_run_saves_merged_weights(tiny_model, tmp_path):
    r = run_cli(train_args(tiny_model, SAMPLE, str(tmp_path), "--lora", "on", "--eval-fraction", "0",
                           "--max-steps", "3", "--max-seq-len", "64", "--batch-size", "8"))
    assert r.code == 0, r.lines[-1]
    assert r.of("start")[0]["hyperparameters"]["lora"] is True
    with open(tmp_path / "out" / "manifest.json", encoding="utf-8") as f:
        training = json.load(f)["training"]
    assert training["lora"] and training["trainable_parameters"] < training["parameters"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert not any("lora" in n for n, _ in model.named_parameters())


# A model id that is not a directory on the machine is a Hugging Face id; when the Hub cannot
# be reached the run fails at once with its own code, saying what the id was taken for.
def test_unreachable_hub_fails_fast_with_its_own_code(tmp_path, monkeypatch):
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.time()
    r = run_cli(train_args("someone/no-such-model-here", SAMPLE, str(tmp_path)))
    assert_bad_input(r, "model_unavailable", str(tmp_path), "taken as a Hugging Face id")
    assert f"127.0.0.1:{port}" in r.last["message"]
    assert time.time() - started < 15
