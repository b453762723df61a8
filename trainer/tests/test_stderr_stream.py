"""The runtime's stderr streamed as protocol log events (progress.StderrFollower): in order
with the other events, rate-limited, with stderr.log itself left complete."""

import io
import os
import subprocess
import sys
import textwrap

from conftest import SAMPLE, TRAINER, VECTORS

from understudy_trainer import progress


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def follower_on(tmp_path, **kw):
    path = tmp_path / "stderr.log"
    path.write_bytes(b"left by an earlier run\n")
    out = io.StringIO()
    em = progress.Emitter(out, clock=lambda: 1764370000.0)
    fd = os.open(path, os.O_RDONLY)
    clock = kw.pop("clock", Clock())
    f = progress.StderrFollower(em, fd, start=path.stat().st_size, clock=clock, poll=3600, **kw)
    em.follow(f)
    return path, out, em, f


def events_of(out):
    events, ignored = progress.parse_stream(out.getvalue().splitlines())
    assert ignored == []
    return events


def append(path, data):
    with open(path, "ab") as f:
        f.write(data)


def test_lines_come_before_the_event_that_follows_them(tmp_path):
    path, out, em, f = follower_on(tmp_path)
    append(path, b"UserWarning: something\n")
    em.log("a note of the runtime's own")
    append(path, "Traceback (most recent call last):\n  boom ✓\r\n".encode())
    em.error("internal", "RuntimeError: boom")
    append(path, b"after the last event\n")
    f.close()
    events = events_of(out)
    assert [(e["event"], e.get("stream"), e.get("message")) for e in events] == [
        ("log", "stderr", "UserWarning: something"),
        ("log", None, "a note of the runtime's own"),
        ("log", "stderr", "Traceback (most recent call last):"),
        ("log", "stderr", "  boom ✓"),
        ("error", None, "RuntimeError: boom"),
    ]
    # Each line says where it ends in the file, so a reader can take what follows.
    size = len(b"left by an earlier run\n")
    assert events[0]["stderr_offset"] == size + len(b"UserWarning: something\n")
    assert events[3]["stderr_offset"] == path.stat().st_size - len(b"after the last event\n")


def test_a_flood_is_summarised(tmp_path):
    path, out, em, f = follower_on(tmp_path, burst=200, rate=20.0)
    append(path, b"".join(b"chatty line %d\n" % i for i in range(10000)))
    em.log("next")
    f.close()
    events = events_of(out)
    shown = [e for e in events if e.get("stream") == "stderr" and e["level"] == "info"]
    summaries = [e for e in events if e.get("stream") == "stderr" and e["level"] == "warning"]
    assert len(shown) == 200 and shown[-1]["message"] == "chatty line 199"
    assert [s["message"] for s in summaries] == ["… 9800 stderr lines not shown, see stderr.log"]
    assert summaries[0]["stderr_offset"] == path.stat().st_size
    assert events[-1]["message"] == "next"


def test_a_flood_resumes_at_the_rate_after_a_second(tmp_path):
    clock = Clock()
    path, out, em, f = follower_on(tmp_path, burst=5, rate=2.0, clock=clock)
    append(path, b"".join(b"a%d\n" % i for i in range(20)))
    f.catch_up()
    clock.t += 1.5
    append(path, b"b0\nb1\nb2\nb3\n")
    f.catch_up()
    f.close()
    messages = [e["message"] for e in events_of(out)]
    # 5 at once, 15 dropped; 1.5 s later 3 tokens: the summary, then b0..b2; b3 summarised.
    assert messages == ["a0", "a1", "a2", "a3", "a4", "… 15 stderr lines not shown, see stderr.log",
                        "b0", "b1", "b2", "… 1 stderr line not shown, see stderr.log"]


def test_progress_bars_redraw_rarely(tmp_path):
    clock = Clock()
    path, out, em, f = follower_on(tmp_path, clock=clock)
    for i in range(1000):
        append(path, b"\rDownloading: %3d%%|" % (i // 10))
        if i % 100 == 0:
            f.catch_up()
            clock.t += 2
    append(path, b"\rDownloading: 100%|done\n\r    \r")
    f.close()
    messages = [e["message"] for e in events_of(out)]
    assert messages == ["Downloading:   0%|", "Downloading:  50%|", "Downloading: 100%|done"]


def test_long_lines_are_cut(tmp_path):
    path, out, em, f = follower_on(tmp_path, max_chars=50)
    append(path, b"x" * 120 + b"\n" + b"y" * 1000)
    f.catch_up()
    append(path, b"y" * 1000 + b"\nshort\nunterminated")
    f.close()
    messages = [e["message"] for e in events_of(out)]
    assert messages == ["x" * 50 + " … (truncated; see stderr.log)", "y" * 50 + " … (truncated; see stderr.log)",
                        "short", "unterminated"]


def test_stderr_vector():
    with open(os.path.join(VECTORS, "stderr.jsonl"), encoding="utf-8") as f:
        events, ignored = progress.parse_stream(f.read().splitlines())
    assert ignored == []
    assert [(e["event"], e.get("stream")) for e in events] == [
        ("log", "stderr"), ("log", None), ("log", "stderr"), ("log", "stderr"), ("error", None)]
    assert events[0]["stderr_offset"] == 43 and events[3]["level"] == "warning"
    bad, why = progress.parse_line('{"v":1,"event":"log","time":1,"level":"info","message":"x","stream":"stdout"}')
    assert bad is None and "stream" in why


# The runtime as launch.sh starts it: stderr appended to a file, the protocol on stdout. A
# sitecustomize module writes to stderr (Python and fd 2 directly) once the run has parsed its
# hyperparameters, then fails.
INJECT = """
import os, sys
from understudy_trainer import hparams

_validate = hparams.validate

def validate(explicit):
    print("UserWarning: injected before the failure", file=sys.stderr)
    os.write(2, b"native: written to fd 2\\n")
    for i in range(int(os.environ.get("FLOOD", "0"))):
        print(f"flood {i}", file=sys.stderr)
    for i in range(int(os.environ.get("BARS", "0"))):
        sys.stderr.write(f"\\rbar {i}")
    if os.environ.get("BARS"):
        sys.stderr.write("\\n")
    if os.environ.get("CRASH"):
        raise RuntimeError("injected crash")
    return _validate(explicit)

hparams.validate = validate
"""


def run_runtime(tmp_path, env_extra, hparams='{"epochs": 0}'):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(INJECT))
    env = dict(os.environ, PYTHONPATH=str(site) + os.pathsep + TRAINER, UNDERSTUDY_STREAM_STDERR="1",
               UNDERSTUDY_NO_TORCHRUN="1")
    env.pop("UNDERSTUDY_STDERR_FROM", None)
    env.update(env_extra)
    err_path = tmp_path / "stderr.log"
    err_path.write_bytes(b"an earlier attempt's line\n")
    with open(err_path, "ab") as err:
        p = subprocess.run([sys.executable, "-m", "understudy_trainer", "train", "--model", str(tmp_path / "no-model"),
                            "--dataset", SAMPLE, "--output-dir", str(tmp_path / "out"), "--checkpoint-dir",
                            str(tmp_path / "ckpt"), "--hyperparameters-json", hparams],
                           env=env, stdout=subprocess.PIPE, stderr=err, timeout=300, check=False)
    events, ignored = progress.parse_stream(p.stdout.decode().splitlines())
    assert ignored == []
    return p.returncode, events, err_path.read_bytes().decode()


def test_runtime_streams_stderr_before_its_error(tmp_path):
    code, events, stderr = run_runtime(tmp_path, {})
    assert code == 2
    assert [(e["event"], e.get("stream"), e.get("code") or e.get("message")) for e in events] == [
        ("log", "stderr", "UserWarning: injected before the failure"),
        ("log", "stderr", "native: written to fd 2"),
        ("error", None, "invalid_hyperparameters"),
    ]
    assert stderr.startswith("an earlier attempt's line\nUserWarning: injected before the failure\n"
                             "native: written to fd 2\n")
    assert events[1]["stderr_offset"] == len(stderr.encode())


def test_runtime_traceback_precedes_the_error(tmp_path):
    code, events, stderr = run_runtime(tmp_path, {"CRASH": "1"})
    assert code == 1
    assert events[-1]["event"] == "error" and "injected crash" in events[-1]["message"]
    lines = [e["message"] for e in events[:-1]]
    assert all(e.get("stream") == "stderr" for e in events[:-1])
    assert "Traceback (most recent call last):" in lines and lines[-1] == "RuntimeError: injected crash"
    assert stderr.rstrip("\n").endswith("RuntimeError: injected crash")
    assert events[-2]["stderr_offset"] == len(stderr.encode())


def test_runtime_flood_and_bars_are_held_back_but_kept_in_the_file(tmp_path):
    code, events, stderr = run_runtime(tmp_path, {"FLOOD": "10000", "BARS": "5000"})
    assert code == 2
    assert events[-1]["event"] == "error"
    stderr_events = [e for e in events if e.get("stream") == "stderr"]
    assert len(stderr_events) < 260
    assert any(e["message"].endswith("stderr lines not shown, see stderr.log") for e in stderr_events)
    lines = stderr.split("\n")
    assert sum(1 for line in lines if line.startswith("flood ")) == 10000
    assert stderr.count("\rbar ") == 5000


def test_stderr_is_line_buffered_when_started_unbuffered(tmp_path):
    """torchrun starts its ranks with -u, and every process appends to one stderr file: the
    runtime makes stderr line-buffered, so that print() reaches the file a line at a time (a
    line and its newline written apart could interleave with another rank's line)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import atexit, sys
        atexit.register(lambda: sys.__stderr__.write(
            f"stderr write_through={sys.stderr.write_through} line_buffering={sys.stderr.line_buffering}\\n"))
    """))
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{TRAINER}", UNDERSTUDY_NO_TORCHRUN="1")
    proc = subprocess.run([sys.executable, "-u", "-m", "understudy_trainer", "train", "--model", str(tmp_path / "no-model"),
                           "--dataset", SAMPLE, "--output-dir", str(tmp_path / "out"), "--device", "cpu",
                           "--hyperparameters-json", '{"epochs": 0}'], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "stderr write_through=False line_buffering=True" in proc.stderr, proc.stderr[-2000:]


def test_torchrun_streams_every_process_once(tmp_path):
    """Under torchrun, rank 0 alone streams the file every process writes its stderr to: the
    launching process's lines and the ranks' own, each once."""
    from test_distributed import finish, launch

    tmp = str(tmp_path)
    # One write per line: this runs before the runtime's main() makes stderr line-buffered
    # (test_stderr_is_line_buffered_when_started_unbuffered), and torchrun starts ranks with -u.
    inject = """
        import os, sys
        if os.environ.get("LOCAL_RANK") is not None:
            sys.stderr.write(f"rank {os.environ['RANK']} says hello\\n")
    """
    proc = launch(["train", "--model", os.path.join(tmp, "no-model"), "--dataset", SAMPLE, "--output-dir",
                   os.path.join(tmp, "out"), "--checkpoint-dir", os.path.join(tmp, "ckpt"), "--device", "cpu",
                   "--hyperparameters-json", '{"epochs": 0}'],
                  tmp, nproc=2, inject=inject, extra_env={"UNDERSTUDY_STREAM_STDERR": "1"})
    code, events = finish(proc, tmp)
    assert code == 2
    assert events[-1]["event"] == "error" and events[-1]["code"] == "invalid_hyperparameters"
    assert all(e.get("stream") == "stderr" for e in events[:-1])
    lines = [e["message"] for e in events[:-1]]
    assert len(lines) == len(set(lines))
    assert any(line.startswith("launching 2 processes") for line in lines)
    assert "rank 0 says hello" in lines
    with open(os.path.join(tmp, "stderr"), encoding="utf-8") as f:
        stderr = f.read()
    assert "rank 0 says hello\n" in stderr and "rank 1 says hello\n" in stderr
