import io
import os

import pytest
from conftest import VECTORS

from understudy_trainer import progress


def read(name):
    with open(os.path.join(VECTORS, name), encoding="utf-8") as f:
        return f.read().splitlines()


def test_valid_vectors_parse_completely():
    events, ignored = progress.parse_stream(read("valid.jsonl"))
    assert ignored == []
    assert [e["event"] for e in events] == ["start", "eval", "step", "log", "step", "checkpoint", "eval", "done"]
    assert events[-1]["metrics"]["eos_rate"] == 0.8
    assert events[4]["mfu"] is None


def test_tolerated_vectors_skip_noise_and_unknown_fields():
    events, ignored = progress.parse_stream(read("tolerated.jsonl"))
    assert [(e["event"], e["step"]) for e in events] == [("step", 1), ("step", 2)]
    assert events[0]["future_field"] is True  # unknown fields are kept, not fatal
    assert [line for line, _ in ignored] == [1, 3, 4]
    assert "not JSON" in ignored[0][1]
    assert "not a JSON object" in ignored[1][1]
    assert "unknown event" in ignored[2][1]


def test_error_vector():
    (event,), ignored = progress.parse_stream(read("error.jsonl"))
    assert ignored == []
    assert event["event"] == "error" and event["code"] == "invalid_dataset"
    assert event["code"] in progress.ERROR_CODES


@pytest.mark.parametrize("line,reason", [
    ('{"v":1,"event":"step","time":1.0,"step":1}', "missing field"),
    ('{"v":2,"event":"log","time":1.0,"level":"info","message":"x"}', "version"),
    ('{"v":1,"event":"eval","time":1.0,"step":1,"eval_loss":1,"perplexity":2,"phase":"later"}', "phase"),
    ('{"v":1,"event":"step","time":1.0,"step":true,"total_steps":1,"epoch":1,"loss":1,"learning_rate":1,'
     '"tokens_per_second":1,"eta_seconds":0}', "step"),
    ("x" * (64 * 1024 + 1), "64 KiB"),
])
def test_malformed_known_events_are_ignored_not_fatal(line, reason):
    event, why = progress.parse_line(line)
    assert event is None and reason in why


def test_emitter_round_trips_and_refuses_bad_events():
    out = io.StringIO()
    em = progress.Emitter(out, clock=lambda: 1764370000.0)
    em.emit("step", step=1, total_steps=2, epoch=0.5, loss=1.5, learning_rate=1e-3, tokens_per_second=10.0,
            mfu=float("nan"), eta_seconds=1.0)
    em.log("hello")
    em.error("internal", "boom")
    events, ignored = progress.parse_stream(out.getvalue().splitlines())
    assert ignored == [] and [e["event"] for e in events] == ["step", "log", "error"]
    assert events[0]["mfu"] is None  # non-finite numbers never reach the JSON
    with pytest.raises(progress.ProtocolError):
        em.emit("step", step=1)
    with pytest.raises(progress.ProtocolError):
        em.emit("eval", step=1, eval_loss=1.0, perplexity=2.0, phase="sometime")
