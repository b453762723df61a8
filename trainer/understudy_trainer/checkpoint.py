"""Checkpoints: ``<dir>/step-00000020/`` holding the trainable weights, the optimizer,
scheduler and RNG states and the data position. Written to a temporary directory and renamed,
so a crash never leaves a half-written checkpoint under a ``step-`` name; the last two kept."""

import json
import os
import re
import shutil

import torch

KEEP = 2
_NAME = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.json"


def name_for(step):
    return f"step-{step:08d}"


def list_steps(ckpt_dir):
    """Complete checkpoints, oldest first, as (step, path)."""
    if not os.path.isdir(ckpt_dir):
        return []
    out = []
    for entry in os.listdir(ckpt_dir):
        m = _NAME.match(entry)
        path = os.path.join(ckpt_dir, entry)
        if m and os.path.isfile(os.path.join(path, STATE_FILE)):
            out.append((int(m.group(1)), path))
    return sorted(out)


def clean_temporaries(ckpt_dir):
    if not os.path.isdir(ckpt_dir):
        return
    for entry in os.listdir(ckpt_dir):
        if entry.startswith(".tmp-"):
            shutil.rmtree(os.path.join(ckpt_dir, entry), ignore_errors=True)


def remove_all(ckpt_dir):
    for _, path in list_steps(ckpt_dir):
        shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(ckpt_dir, step, state, tensors):
    """Writes one checkpoint. ``state`` is JSON-able; ``tensors`` maps file names to objects
    for torch.save. Returns the checkpoint's name relative to ckpt_dir."""
    os.makedirs(ckpt_dir, exist_ok=True)
    name = name_for(step)
    tmp = os.path.join(ckpt_dir, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for fname, obj in tensors.items():
        path = os.path.join(tmp, fname)
        with open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    final = os.path.join(ckpt_dir, name)
    if os.path.exists(final):  # the same step written again (a resumed run's final checkpoint)
        old = os.path.join(ckpt_dir, f".tmp-old-{name}-{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(ckpt_dir)
    for _, path in list_steps(ckpt_dir)[:-KEEP]:
        shutil.rmtree(path, ignore_errors=True)
    return name


def load_latest(ckpt_dir):
    """Returns (state, path) of the newest readable checkpoint, or (None, None)."""
    for _, path in reversed(list_steps(ckpt_dir)):
        try:
            with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
                return json.load(f), path
        except (OSError, ValueError):
            continue
    return None, None


def load_tensors(path, fname, map_location="cpu"):
    return torch.load(os.path.join(path, fname), map_location=map_location, weights_only=False)
