import io
import json
import os
import sys

import pytest

TRAINER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TRAINER)
sys.path.insert(0, TRAINER)
sys.path.insert(0, os.path.join(TRAINER, "tools"))

SAMPLE = os.path.join(REPO, "examples", "sample-pairs.jsonl")
CHAT = os.path.join(REPO, "examples", "sample-chat.jsonl")
VECTORS = os.path.join(REPO, "testdata", "progress")

# One thread: the suite shares small machines, and the SIGKILL test compares a subprocess
# against this process within a tight tolerance, so both must use the same thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    import make_tiny_model

    out = str(tmp_path_factory.mktemp("models") / "tiny-gpt2")
    return make_tiny_model.build(make_tiny_model.texts_from_jsonl(SAMPLE), out)


@pytest.fixture(scope="session")
def tiny_model_dropout(tmp_path_factory):
    """With dropout, so resuming must restore the RNG to reproduce the loss curve."""
    import make_tiny_model

    out = str(tmp_path_factory.mktemp("models") / "tiny-gpt2-dropout")
    return make_tiny_model.build(make_tiny_model.texts_from_jsonl(SAMPLE), out, dropout=0.1)


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


class Result:
    def __init__(self, code, text):
        from understudy_trainer import progress

        self.code = code
        self.lines = [line for line in text.split("\n") if line]
        self.events, self.ignored = progress.parse_stream(self.lines)

    def of(self, event):
        return [e for e in self.events if e["event"] == event]

    @property
    def last(self):
        return self.events[-1]


def run_cli(argv, stream=None, install_signals=False):
    """Runs the CLI in this process and parses what it wrote."""
    from understudy_trainer import cli

    stream = stream or io.StringIO()
    code = cli.run(argv, stream, install_signals=install_signals)
    return Result(code, stream.getvalue())


def train_args(model, dataset, tmp, *extra):
    return ["train", "--model", model, "--dataset", dataset, "--output-dir", os.path.join(tmp, "out"),
            "--checkpoint-dir", os.path.join(tmp, "ckpt"), *extra]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)
