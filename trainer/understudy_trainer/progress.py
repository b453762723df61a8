"""The progress protocol (docs/progress-protocol.md): JSON lines on stdout.

``Emitter`` writes the lines; ``parse_line`` reads them back with the same tolerance rules as
the Go reader: lines that are not JSON objects, unknown events and malformed known events are
ignored (with a reason), unknown fields are ignored.
"""

import json
import math
import os
import re
import stat
import sys
import threading
import time

VERSION = 1
MAX_LINE_BYTES = 64 * 1024

ERROR_CODES = (
    "invalid_dataset",
    "invalid_model",
    "invalid_hyperparameters",
    "out_of_memory",
    "preempted",
    "internal",
)

_INT = "int"
_NUM = "number"
_STR = "string"
_OBJ = "object"
_LIST = "array"

# Required fields per event; a tuple of allowed values stands for an enumerated string.
FIELDS = {
    "start": {
        "model": _STR, "total_steps": _INT, "epochs": _INT, "pairs_used": _INT,
        "pairs_skipped": _INT, "train_examples": _INT, "eval_examples": _INT, "device": _STR,
        "gpu": (_STR, None), "resumed_from_step": _INT, "hyperparameters": _OBJ,
    },
    "step": {
        "step": _INT, "total_steps": _INT, "epoch": _NUM, "loss": _NUM,
        "learning_rate": _NUM, "tokens_per_second": _NUM, "eta_seconds": _NUM,
    },
    "eval": {"step": _INT, "eval_loss": _NUM, "perplexity": _NUM, "phase": ("before", "during", "after")},
    "checkpoint": {"step": _INT, "path": _STR, "reason": ("interval", "preempted", "final")},
    "log": {"level": ("info", "warning"), "message": _STR},
    "done": {"files": _LIST, "metrics": _OBJ, "output_dir": _STR},
    "error": {"code": _STR, "message": _STR},
}
OPTIONAL = {
    "step": {"mfu": (_NUM, None), "gpu_utilization": (_NUM, None), "gpu_memory_bytes": (_INT, None)},
    # A line of the runtime's stderr (StderrFollower): where it came from, and the byte
    # offset in the stderr file just past it.
    "log": {"stream": ("stderr",), "stderr_offset": _INT},
}
EVENTS = tuple(FIELDS)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ProtocolError(ValueError):
    pass


def _check(kind, v):
    if isinstance(kind, tuple):
        if None in kind and v is None:
            return True
        kinds = [k for k in kind if k is not None]
        if kinds and kinds[0] in (_STR, _NUM, _INT, _OBJ, _LIST):
            return any(_check(k, v) for k in kinds)
        return v in kinds
    if kind == _INT:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == _NUM:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == _STR:
        return isinstance(v, str)
    if kind == _OBJ:
        return isinstance(v, dict)
    if kind == _LIST:
        return isinstance(v, list)
    raise AssertionError(kind)


def validate(obj):
    """Raises ProtocolError when ``obj`` is not a valid line of a known event."""
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    if obj.get("v") != VERSION or isinstance(obj.get("v"), bool):
        raise ProtocolError(f"unsupported protocol version {obj.get('v')!r}")
    event = obj.get("event")
    if event not in FIELDS:
        raise ProtocolError(f"unknown event {event!r}")
    if not _check(_NUM, obj.get("time")):
        raise ProtocolError("time: missing or not a number")
    for name, kind in FIELDS[event].items():
        if name not in obj:
            raise ProtocolError(f"{event}: missing field {name!r}")
        if not _check(kind, obj[name]):
            raise ProtocolError(f"{event}: bad value for {name!r}: {obj[name]!r}")
    for name, kind in OPTIONAL.get(event, {}).items():
        if name in obj and not _check(kind, obj[name]):
            raise ProtocolError(f"{event}: bad value for {name!r}: {obj[name]!r}")
    if event == "done":
        for f in obj["files"]:
            if not (isinstance(f, dict) and _check(_STR, f.get("path")) and _check(_INT, f.get("size"))
                    and isinstance(f.get("sha256"), str) and _SHA256.match(f["sha256"])):
                raise ProtocolError(f"done: bad file entry {f!r}")
    return obj


def parse_line(line):
    """Returns ``(event, None)`` for a valid line, ``(None, reason)`` for a line to ignore."""
    if isinstance(line, bytes):
        if len(line) > MAX_LINE_BYTES:
            return None, "line longer than 64 KiB"
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            return None, "not UTF-8"
    elif len(line.encode("utf-8")) > MAX_LINE_BYTES:
        return None, "line longer than 64 KiB"
    line = line.rstrip("\r\n")
    try:
        obj = json.loads(line)
    except ValueError:
        return None, "not JSON"
    try:
        return validate(obj), None
    except ProtocolError as e:
        return None, str(e)


def parse_stream(lines):
    """Parses many lines; returns (events, ignored) where ignored holds (line_no, reason)."""
    events, ignored = [], []
    for i, line in enumerate(lines, 1):
        ev, reason = parse_line(line)
        if ev is None:
            ignored.append((i, reason))
        else:
            events.append(ev)
    return events, ignored


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def gpu_sample(index=0, nvidia_smi="nvidia-smi"):
    """Samples CUDA device ``index`` for a ``step`` event: ``{"gpu_utilization": 0..1,
    "gpu_memory_bytes": int}``, each field only when it could be read (an empty dict on a
    machine without CUDA). Utilisation comes from torch (through NVML) or else nvidia-smi;
    memory is the device's memory in use, by every process, as nvidia-smi shows it."""
    out = {}
    try:
        import torch
        if not torch.cuda.is_available():
            return out
    except Exception:
        return out
    try:
        free, total = torch.cuda.mem_get_info(index)
        out["gpu_memory_bytes"] = int(total - free)
    except Exception:
        pass
    util = None
    try:
        util = float(torch.cuda.utilization(index))
    except Exception:
        try:
            import subprocess
            r = subprocess.run([nvidia_smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", str(index)],
                               capture_output=True, text=True, timeout=2, check=True)
            util = float(r.stdout.strip().splitlines()[0])
        except Exception:
            util = None
    if util is not None and math.isfinite(util):
        out["gpu_utilization"] = round(min(max(util / 100.0, 0.0), 1.0), 4)
    return out


class Emitter:
    """Writes protocol lines to a text stream, one flushed line each. Only rank 0 of a
    distributed run gets an enabled emitter. Safe for several threads: each line is written
    whole, under a lock. With a StderrFollower attached (``follow``), every event is
    preceded by the stderr lines written before it, and none follows ``done`` or ``error``."""

    TERMINAL = ("done", "error")

    def __init__(self, stream, enabled=True, clock=time.time):
        self.stream = stream
        self.enabled = enabled
        self.clock = clock
        self.last_event = None
        self.follower = None
        self._lock = threading.Lock()

    def follow(self, follower):
        self.follower = follower

    def _line(self, event, fields):
        obj = {"v": VERSION, "event": event, "time": round(self.clock(), 3)}
        obj.update({k: _finite(v) for k, v in fields.items()})
        validate(obj)
        line = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        if len(line.encode("utf-8")) > MAX_LINE_BYTES:
            raise ProtocolError(f"{event} line longer than 64 KiB")
        return obj, line

    def _write(self, line):
        with self._lock:
            if self.enabled:
                self.stream.write(line + "\n")
                self.stream.flush()

    def emit(self, event, **fields):
        obj, line = self._line(event, fields)
        follower = self.follower
        if follower is None:
            self.last_event = event
            self._write(line)
            return obj
        with follower.lock:
            try:
                sys.stderr.flush()
                follower.catch_up(final=event in self.TERMINAL, summarise=True)
            except (OSError, ValueError):
                follower.finished = True  # stderr unreadable: the event matters more
            self.last_event = event
            self._write(line)
            if event in self.TERMINAL:
                follower.finished = True
        return obj

    def log(self, message, level="info"):
        return self.emit("log", level=level, message=message[:4096])

    def error(self, code, message):
        return self.emit("error", code=code, message=message[:8192])


class StderrFollower:
    """Streams the runtime's stderr as ``log`` events with ``"stream": "stderr"``, in order
    with the other events.

    It follows the file that fd 2 writes to (``stderr.log`` on the machine, appended to by
    every process of the run, torchrun's workers included) from byte ``start`` on, reading
    it through a descriptor of its own: the file itself stays exactly as the processes wrote
    it, and a process that dies hard (a segfault, an abort in native code, SIGKILL) loses
    nothing from it. A thread polls the file; the emitter catches up on it before each event
    of its own. Lines are split at ``\\n`` and ``\\r``; a line ended by ``\\r`` alone is a
    redraw (a progress bar) and is shown at most every ``redraw_every`` seconds; lines longer
    than ``max_chars`` are cut. At most ``burst`` lines at once and ``rate`` per second on
    average are shown: beyond that, lines are counted for at least a second and then
    summarised in one event."""

    def __init__(self, emitter, fd, start, max_chars=2000, burst=200, rate=20.0, redraw_every=10.0, poll=0.25,
                 clock=time.monotonic):
        self.emitter = emitter
        self.fd = fd
        self.pos = start  # the next byte of the file to read
        self.max_chars = max_chars
        self.burst = burst
        self.rate = rate
        self.redraw_every = redraw_every
        self.poll = poll
        self.clock = clock
        self.lock = threading.RLock()
        self.finished = False
        self._partial = b""
        self._skipping = False  # dropping the rest of a line already cut
        self._tokens = float(burst)
        self._refilled = clock()
        self._dropped = 0
        self._dropped_since = 0.0
        self._dropped_end = start
        self._redraw_at = None
        self._stop = threading.Event()
        self._thread = None

    @classmethod
    def open_stderr(cls, emitter, start=None, **kw):
        """A follower of this process's fd 2, or None when fd 2 is not a regular file (a
        pipe or a terminal cannot be read back)."""
        try:
            st = os.fstat(2)
            if not stat.S_ISREG(st.st_mode):
                return None
            fd = os.open("/proc/self/fd/2", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        mine = os.fstat(fd)
        if (mine.st_dev, mine.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            return None
        return cls(emitter, fd, st.st_size if start is None else start, **kw)

    def start(self):
        self.emitter.follow(self)
        self._thread = threading.Thread(target=self._run, name="stderr-follower", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout=5.0):
        """Takes in what the file holds now (unless a terminal event was written), stops the
        thread and detaches from the emitter."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self.lock:
            try:
                sys.stderr.flush()
            except Exception:  # noqa: BLE001 - stderr gone: nothing to flush
                pass
            self.catch_up(final=True)
            self.finished = True
            if self.emitter.follower is self:
                self.emitter.follower = None
        try:
            os.close(self.fd)
        except OSError:
            pass

    def _run(self):
        while not self._stop.wait(self.poll):
            try:
                with self.lock:
                    if self.finished:
                        return
                    self.catch_up()
            except Exception:  # noqa: BLE001 - the protocol stream is gone: stop following
                return

    def catch_up(self, final=False, summarise=False):
        """Emits what the file holds past what was read (with ``final``, an unterminated last
        line too) and, with ``summarise`` or ``final``, the count of lines held back so far.
        Called with ``lock`` held."""
        if self.finished:
            return
        while True:
            chunk = os.pread(self.fd, 1 << 16, self.pos)
            if not chunk:
                break
            self.pos += len(chunk)
            self._take(self._partial + chunk)
        if final:
            if self._partial and not self._skipping:
                self._line(self._partial, self.pos, redraw=False)
            self._partial, self._skipping = b"", False
        self._summarise(force=final or summarise)

    def _take(self, data):
        base = self.pos - len(data)  # file offset of data[0]
        i = 0
        while True:
            j = _next_break(data, i)
            if j < 0:
                break
            if data[j] == 0x0D and j + 1 == len(data):
                break  # a \r that may be the first half of \r\n: wait for the next byte
            crlf = data[j] == 0x0D and data[j + 1] == 0x0A
            stop = j + 2 if crlf else j + 1
            redraw = data[j] == 0x0D and not crlf
            if self._skipping:
                self._skipping = False
            else:
                self._line(data[i:j], base + stop, redraw)
            i = stop
        rest = data[i:]
        limit = self.max_chars * 4
        if len(rest) > limit and not self._skipping:
            self._line(rest[:limit], base + i + limit, redraw=False)
            self._skipping = True
        self._partial = b"" if self._skipping else rest

    def _line(self, raw, end, redraw):
        text = raw.decode("utf-8", errors="replace").rstrip()
        if not text.strip():
            return
        if len(text) > self.max_chars:
            text = text[:self.max_chars] + " … (truncated; see stderr.log)"
        now = self.clock()
        if redraw:
            if self._redraw_at is not None and now - self._redraw_at < self.redraw_every:
                return
            self._redraw_at = now
        self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._dropped and now - self._dropped_since < 1.0 or self._tokens < 1:
            if not self._dropped:
                self._dropped_since = now
            self._dropped += 1
            self._dropped_end = end
            return
        self._summarise(force=True)
        self._tokens -= 1
        self._emit(text, end, "info")

    def _summarise(self, force=False):
        if not self._dropped or not force and self.clock() - self._dropped_since < 1.0:
            return
        n, self._dropped = self._dropped, 0
        self._emit(f"… {n} stderr line{'s' if n != 1 else ''} not shown, see stderr.log", self._dropped_end, "warning")

    def _emit(self, text, end, level):
        _, line = self.emitter._line("log", {"level": level, "message": text, "stream": "stderr", "stderr_offset": end})
        self.emitter._write(line)


def _next_break(data, i):
    """Index of the next \\n or \\r in ``data`` from ``i``, or -1."""
    n, r = data.find(b"\n", i), data.find(b"\r", i)
    if n < 0:
        return r
    if r < 0:
        return n
    return min(n, r)
