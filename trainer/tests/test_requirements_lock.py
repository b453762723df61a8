"""The lock that scripts/benchenv.sh installs on a machine's own PyTorch (and that
scripts/wheelhouse.sh downloads) must hold every pin of the runtime and of the benchmarks at
its pinned version, and nothing that only PyTorch needs."""

import os
import re

TRAINER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")
TORCH_ONLY = {"torch", "triton", "sympy", "mpmath", "networkx", "jinja2", "markupsafe"}


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path):
    out = {}
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"{os.path.relpath(path, TRAINER)}: not an exact pin: {line!r}"
        out[norm(m.group(1))] = m.group(2)
    return out


def test_lock_holds_every_pin_but_torch():
    lock = pins(os.path.join(TRAINER, "bench", "requirements-lock.txt"))
    for f in ("requirements.txt", "requirements-dev.txt", os.path.join("bench", "requirements-bench.txt")):
        for name, version in pins(os.path.join(TRAINER, f)).items():
            if name == "torch":
                continue
            assert lock.get(name) == version, f"{f} pins {name}=={version}; the lock has {lock.get(name)}"


def test_lock_leaves_pytorch_to_the_machine():
    lock = pins(os.path.join(TRAINER, "bench", "requirements-lock.txt"))
    leaked = sorted(n for n in lock if n in TORCH_ONLY or n.startswith("nvidia-"))
    assert not leaked, f"the lock would shadow the machine's PyTorch with {leaked}"
