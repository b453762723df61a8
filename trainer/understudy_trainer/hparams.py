"""Hyperparameters: the allowed names and ranges (hparams_schema.json, shared with the Go API)
and the defaults chosen from the model size, the data size and the device."""

import json
import math
import os

from .errors import INVALID_HYPERPARAMETERS, BadInput

# The largest micro-batch a default picks (the schema allows up to 1024 when asked for).
MAX_DEFAULT_BATCH = 512

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hparams_schema.json")


def load_schema():
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def _is_integer(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def validate(values, schema=None):
    """Checks ``values`` (a dict) against the schema and returns a copy; raises BadInput naming
    the first bad field. Integral floats (2.0) are accepted for integer fields, as JSON does not
    tell them apart."""
    schema = schema or load_schema()
    if not isinstance(values, dict):
        raise BadInput(INVALID_HYPERPARAMETERS, "hyperparameters must be a JSON object")
    out = {}
    for name in sorted(values):
        v = values[name]
        rule = schema.get(name)
        if rule is None:
            allowed = ", ".join(sorted(schema))
            raise BadInput(INVALID_HYPERPARAMETERS, f"{name}: unknown hyperparameter (allowed: {allowed})")
        if rule["type"] == "integer":
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not _is_integer(v):
                raise BadInput(INVALID_HYPERPARAMETERS, f"{name}: must be an integer, got {v!r}")
        else:
            if not _is_number(v):
                raise BadInput(INVALID_HYPERPARAMETERS, f"{name}: must be a number, got {v!r}")
            v = float(v)
        if "minimum" in rule and v < rule["minimum"]:
            raise BadInput(INVALID_HYPERPARAMETERS, f"{name}: {v} is below the minimum {rule['minimum']}")
        if "exclusiveMinimum" in rule and v <= rule["exclusiveMinimum"]:
            raise BadInput(INVALID_HYPERPARAMETERS, f"{name}: {v} must be above {rule['exclusiveMinimum']}")
        if "maximum" in rule and v > rule["maximum"]:
            raise BadInput(INVALID_HYPERPARAMETERS, f"{name}: {v} is above the maximum {rule['maximum']}")
        out[name] = v
    return out


def parse_json(text):
    """Parses --hyperparameters-json; an empty string means none."""
    if text is None or not text.strip():
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(INVALID_HYPERPARAMETERS, f"hyperparameters are not valid JSON: {e}") from None
    return validate(values)


def default_max_seq_len(pair_lengths, model_max_positions):
    """Smallest power of two (at least 64) holding 99% of the pairs whole, capped by the model's
    context and 2048: longer windows cost quadratic attention for a few outliers."""
    cap = min(model_max_positions or 2048, 2048)
    if not pair_lengths:
        return min(512, cap)
    lengths = sorted(pair_lengths)
    p99 = lengths[min(len(lengths) - 1, int(math.ceil(0.99 * len(lengths))) - 1)]
    n = 64
    while n < p99 + 1 and n < cap:
        n *= 2
    return max(16, min(n, cap))


def default_epochs(n_pairs):
    """Small sets need more passes to be learnt; big ones would overfit or take too long."""
    if n_pairs < 1000:
        return 3
    if n_pairs < 20000:
        return 2
    return 1


def default_learning_rate(n_params, lora):
    if lora:
        return 2e-4
    if n_params < 50e6:
        return 1e-3
    if n_params < 500e6:
        return 5e-5
    if n_params < 3e9:
        return 2e-5
    return 1e-5


def micro_batch_tokens(n_params, gpu_memory_bytes):
    """Tokens per micro-batch on a GPU: ~16K for small models, fewer for big ones, half that
    on a GPU of less than 20 GB. A step's examples are cut into micro-batches of about this
    many tokens, however many examples that is (the out-of-memory fallback halves it)."""
    if n_params < 500e6:
        tokens = 16384
    elif n_params < 3e9:
        tokens = 8192
    else:
        tokens = 4096
    if gpu_memory_bytes and gpu_memory_bytes < 20e9:
        tokens //= 2
    return tokens


def default_batch_size(device, n_params, max_seq_len, gpu_memory_bytes, mean_example_tokens=None):
    """Examples per micro-batch, sized by tokens: on a GPU, aim at ~16K tokens per
    micro-batch for small models, fewer for big ones. With packing, examples fill rows of
    max_seq_len tokens, so the count comes from the examples' mean length
    (``mean_example_tokens``): short pairs get many examples per micro-batch instead of
    leaving the GPU idle. Without it (padded rows) every example may cost max_seq_len. The
    out-of-memory fallback splits micro-batches further if needed."""
    if device != "cuda":
        return 8
    tokens = micro_batch_tokens(n_params, gpu_memory_bytes)
    per_example = max_seq_len
    if mean_example_tokens:
        per_example = max(1, min(max_seq_len, math.ceil(mean_example_tokens)))
    return int(max(1, min(MAX_DEFAULT_BATCH, tokens // per_example)))
