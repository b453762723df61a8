"""The progress protocol (docs/progress-protocol.md): JSON lines on stdout.

``Emitter`` writes the lines; ``parse_line`` reads them back with the same tolerance rules as
the Go reader: lines that are not JSON objects, unknown events and malformed known events are
ignored (with a reason), unknown fields are ignored.
"""

import json
import math
import re
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
OPTIONAL = {"step": {"mfu": (_NUM, None), "gpu_utilization": (_NUM, None), "gpu_memory_bytes": (_INT, None)}}
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
    distributed run gets an enabled emitter."""

    def __init__(self, stream, enabled=True, clock=time.time):
        self.stream = stream
        self.enabled = enabled
        self.clock = clock
        self.last_event = None

    def emit(self, event, **fields):
        obj = {"v": VERSION, "event": event, "time": round(self.clock(), 3)}
        obj.update({k: _finite(v) for k, v in fields.items()})
        validate(obj)
        line = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        if len(line.encode("utf-8")) > MAX_LINE_BYTES:
            raise ProtocolError(f"{event} line longer than 64 KiB")
        self.last_event = event
        if self.enabled:
            self.stream.write(line + "\n")
            self.stream.flush()
        return obj

    def log(self, message, level="info"):
        return self.emit("log", level=level, message=message[:4096])

    def error(self, code, message):
        return self.emit("error", code=code, message=message[:8192])
