"""Model loading, the device set-up, the LoRA decision and the response-only loss."""

import contextlib
import functools
import os

import torch
import torch.nn.functional as F

from .data import block_causal_mask
from .errors import INVALID_MODEL, MODEL_UNAVAILABLE, BadInput

# Dense bf16 peak FLOP/s per GPU, for the MFU figure (None where unknown).
PEAK_FLOPS = [
    ("H200", 989e12), ("H100", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("A6000", 155e12),
    ("RTX 6000 Ada", 364e12), ("4090", 165e12), ("3090", 71e12), ("A10G", 70e12), ("A10", 125e12),
    ("L4", 121e12), ("V100", 125e12), ("T4", 65e12),
]


def peak_flops(gpu_name):
    if not gpu_name:
        return None
    for key, value in PEAK_FLOPS:
        if key in gpu_name:
            return value
    return None


def _first_line(e):
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__


def _looks_like_path(name):
    return (os.path.isabs(name) or name.startswith(("./", "../", "~")) or name.endswith(os.sep)
            or name.count("/") > 1 or os.sep != "/" and os.sep in name)


def load_config(name):
    """Loads the model's config, refusing what is not a causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not name:
        raise BadInput(INVALID_MODEL, "no model given")
    if not os.path.exists(name) and _looks_like_path(name):
        raise BadInput(INVALID_MODEL, f"model path does not exist: {name}")
    if os.path.isdir(name) and not os.path.exists(os.path.join(name, "config.json")):
        raise BadInput(INVALID_MODEL, f"model directory has no config.json: {name}")
    if not os.path.isdir(name):
        check_hub(name)
    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/KeyError
        msg = _first_line(e)
        if "couldn't connect" in msg.lower() or "connection" in type(e).__name__.lower():
            raise BadInput(MODEL_UNAVAILABLE, f"{name} is not a directory on the machine, so it was taken as a "
                                              f"Hugging Face id, and it could not be downloaded: {msg}") from None
        raise BadInput(INVALID_MODEL, f"load model config: {msg}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise BadInput(INVALID_MODEL, f"{name}: model type {config.model_type!r} is not a causal language model")
    return config


def hub_endpoint():
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def check_hub(name, timeout=10.0):
    """Fails at once, with its own code, when ``name`` (not a directory here, so a Hugging
    Face id) would have to be downloaded from a Hub this machine cannot reach, instead of
    after the hub client's retries. A model already in the local cache, or offline mode,
    needs no Hub."""
    import socket
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except Exception:  # noqa: BLE001 - an id the cache cannot parse: the load says what is wrong
        pass
    url = urlsplit(hub_endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as e:
        raise BadInput(MODEL_UNAVAILABLE, f"{name} is not a directory on the machine, so it was taken as a Hugging Face id; "
                                          f"the machine cannot reach {url.scheme}://{host}:{port} to download it "
                                          f"({e.strerror or type(e).__name__}): give a local model directory (under the "
                                          f"service's --model-root) or let the machine reach the Hub") from None


def load_tokenizer(name):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # noqa: BLE001
        raise BadInput(INVALID_MODEL, f"load tokenizer: {_first_line(e)}") from None
    return tok


def count_params(config):
    """Parameter count estimated from the config without loading weights."""
    import transformers

    with torch.device("meta"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(config)
        except Exception:  # noqa: BLE001 - odd configs: a rough transformer estimate
            d = getattr(config, "hidden_size", 768)
            n = getattr(config, "num_hidden_layers", 12)
            v = getattr(config, "vocab_size", 50257)
            return 12 * n * d * d + v * d
    return sum(p.numel() for p in model.parameters())


def load_model(name, config, dtype, device=None):
    """Loads the weights in ``dtype``, straight onto ``device`` when one is given (a GPU:
    no full-precision copy of the model on the host per process)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"config": config, "dtype": dtype, "low_cpu_mem_usage": True}
    if device is not None:
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError) as e:
        if "sdpa" not in str(e).lower() and "scaled_dot_product" not in str(e).lower():
            raise BadInput(INVALID_MODEL, f"load model: {_first_line(e)}") from None
        model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="eager", **kwargs)
    except Exception as e:  # noqa: BLE001
        raise BadInput(INVALID_MODEL, f"load model: {_first_line(e)}") from None
    return model


def attn_impl(model):
    return getattr(model.config, "_attn_implementation", None) or "eager"


# Variable-length attention for flattened micro-batches (data.flatten): the examples sit back
# to back in one row and the kernel attends within each, causally, from their boundaries. It
# skips every masked block and builds no [L, L] mask. A model switched to it runs any other
# batch (padded, dense-masked; evaluation, generation) through SDPA as before.
#
# transformers hands the attention function the model's attention_mask but not the extra
# arguments of a model call (GPT-2's LM head model drops them), so the boundaries travel as the
# mask: an int32 tensor [1, 1, max_seqlen, n + 1], the offsets expanded (no copy) along a dim
# whose size is the longest example. A 4-D mask reaches attention untouched, no real mask is
# ever int32, and under torch.compile the longest length is a shape, not a constant.
VARLEN = "understudy_varlen"


def varlen_bounds(cu_seqlens, max_seqlen):
    """The attention mask that carries flattened examples' boundaries to _varlen_attention."""
    return cu_seqlens.view(1, 1, 1, -1).expand(1, 1, max_seqlen, cu_seqlens.numel())


def varlen_kernel(device, dtype, head_dim):
    """The variable-length kernel this device runs, or None: FlashAttention 2 as built into
    PyTorch (CUDA, compute capability 8.0 or newer, bf16/fp16, head size a multiple of 8 up
    to 256)."""
    if device != "cuda" or not torch.cuda.is_available() or dtype not in (torch.bfloat16, torch.float16):
        return None
    if torch.cuda.get_device_capability() < (8, 0) or not torch.backends.cuda.flash_sdp_enabled():
        return None
    if head_dim % 8 or head_dim > 256:
        return None
    return "flash" if _flash_agrees(dtype, head_dim) else None


def _flash_forward(q, k, v, cu, max_seqlen, dropout, scale):
    """FlashAttention 2's variable-length forward as built into PyTorch (differentiable):
    [tokens, heads, head_dim] in and out, causal within each example."""
    return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_seqlen, max_seqlen, dropout, True, False,
                                                   scale=scale)[0]


@functools.cache
def _flash_agrees(dtype, head_dim, device="cuda"):
    """Runs the kernel once on this GPU, forward and backward, on three examples of a row,
    and compares it with the per-example reference: a PyTorch build or a GPU on which it
    fails or disagrees keeps the block-causal mask instead of failing the job."""
    try:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(24, 2, head_dim, device=device, dtype=dtype, generator=g).requires_grad_()
                   for _ in range(3))
        cu = torch.tensor([0, 5, 16, 24], dtype=torch.int32, device=device)
        out = _flash_forward(q, k, v, cu, 11, 0.0, None)
        out.float().sum().backward()
        ref = _segment_attention(q.detach().float(), k.detach().float(), v.detach().float(), cu.cpu(), 0.0, None)
        return q.grad is not None and bool(torch.allclose(out.detach().float(), ref, atol=3e-2, rtol=3e-2))
    except Exception:  # noqa: BLE001 - any failure means: do not use it
        return False


def head_dim(config):
    d = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1)
    return getattr(config, "head_dim", None) or d // max(heads, 1)


def _segment_attention(q, k, v, cu, dropout, scale):
    """The reference path, for devices without a variable-length kernel: causal SDPA over
    each example in turn. ``q``, ``k``, ``v``: [tokens, heads, head_dim]."""
    bounds = cu.tolist()
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1),
                                           dropout_p=dropout, is_causal=True, scale=scale)
        out.append(o.transpose(0, 1))
    return torch.cat(out, 0)


def _varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface: [batch, heads, seq, head_dim] in, [batch, seq, heads,
    head_dim] out. A boundaries mask (varlen_bounds) means one row of flattened examples;
    any other mask, or none, is plain SDPA."""
    if attention_mask is None or attention_mask.dtype != torch.int32:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError("variable-length attention takes one row of flattened examples")
    for arg in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(arg) is not None:  # enable_varlen refuses such models; never ignore one silently
            raise ValueError(f"variable-length attention does not apply {arg}")
    cu, max_seqlen = attention_mask[0, 0, 0], attention_mask.shape[2]
    if query.shape[1] != key.shape[1]:  # grouped-query attention: one key/value head per group
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    q, k, v = (x[0].transpose(0, 1).contiguous() for x in (query, key, value))  # [tokens, heads, head_dim]
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256:
        out = _flash_forward(q, k, v, cu, max_seqlen, dropout, scaling)
    else:
        out = _segment_attention(q, k, v, cu, dropout, scaling)
    return out.unsqueeze(0), None


def _plain_causal_attention(config):
    """Whether every layer attends causally over the whole sequence with a plain softmax:
    no sliding window, logit soft-capping, attention sinks or ALiBi, which the variable-length
    path does not apply."""
    if getattr(config, "sliding_window", None) or "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return False
    for attr in ("attn_logit_softcapping", "alibi", "use_alibi", "position_embedding_type"):
        if getattr(config, attr, None) not in (None, False, "absolute", "rotary", "rope"):
            return False
    return True


def enable_varlen(model):
    """Switches a model loaded with SDPA to VARLEN; returns whether it took. Models whose
    attention does not go through transformers' interface, or is not plain causal
    attention, keep theirs."""
    if attn_impl(model) != "sdpa" or not getattr(model, "_supports_attention_backend", False):
        return False
    if not _plain_causal_attention(model.config):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN, _varlen_attention)
    AttentionMaskInterface.register(VARLEN, sdpa_mask)  # the masks of every other batch
    try:
        model.set_attn_implementation(VARLEN)
    except (ValueError, ImportError):
        return False
    return attn_impl(model) == VARLEN


# Gradients are summed over the ranks in buckets of at most this many elements; a bucket
# (fp32) is held twice while it is flattened and copied back.
GRAD_BUCKET_ELEMENTS = 32 * 1024 * 1024
GRAD_BUCKET_BYTES = 2 * 4 * GRAD_BUCKET_ELEMENTS


def full_finetune_bytes(n_params, world=1):
    """GPU memory a full fine-tune needs: fp32 weights, gradients and two AdamW moments (16
    bytes per parameter), a quarter more for activations at the default batch, and with
    several ranks the gradient buckets being summed."""
    need = 16 * n_params * 1.25
    if world > 1:
        need += GRAD_BUCKET_BYTES
    return need


def needs_lora(n_params, device, gpu_memory_bytes, world=1):
    """Use LoRA when a full fine-tune would not fit in ~85% of the GPU."""
    if device != "cuda" or not gpu_memory_bytes:
        return False
    return full_finetune_bytes(n_params, world) > 0.85 * gpu_memory_bytes


def apply_lora(model):
    from peft import LoraConfig, get_peft_model

    from transformers.pytorch_utils import Conv1D

    # GPT-2's projections are Conv1D layers, whose weights are stored transposed.
    conv1d = any(isinstance(m, Conv1D) for m in model.modules())
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM",
                        fan_in_fan_out=conv1d)
    return get_peft_model(model, config)


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


def _lm_head_skippable(model):
    """Skipping masked positions before the lm_head is exact only when the logits are a plain
    linear map of the last hidden state."""
    head = model.get_output_embeddings()
    cfg = model.config
    if not isinstance(head, torch.nn.Linear):
        return False
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling"):
        if getattr(cfg, attr, None) not in (None, 1, 1.0):
            return False
    return True


def loss_sum(model, batch, device, core=None):
    """Returns (sum of the response-token losses, number of those tokens). Only positions whose
    next token is a target go through the lm_head when that is exact. ``core`` is the model
    without its compile wrapper (defaults to ``model``).

    The target positions are found on the host, from the batch's CPU labels, and handed to
    the device as indices: a boolean mask applied on the GPU would make the host wait for
    the GPU at every micro-batch to learn how many positions it selects."""
    core = core if core is not None else model
    input_ids = batch["input_ids"].to(device, non_blocking=True)
    kwargs = {"input_ids": input_ids, "use_cache": False}
    if "cu_seqlens" in batch:
        # A flattened micro-batch (data.flatten) for a model switched to VARLEN: position ids
        # and the examples' boundaries (varlen_bounds), no [L, L] mask.
        if attn_impl(core) != VARLEN:
            raise ValueError("a flattened micro-batch needs a model switched to variable-length attention")
        cu = batch["cu_seqlens"].to(device, non_blocking=True)
        kwargs["attention_mask"] = varlen_bounds(cu, batch["max_seqlen"])
        kwargs["position_ids"] = batch["position_ids"].to(device, non_blocking=True)
    elif "segments" in batch:
        kwargs["attention_mask"] = block_causal_mask(batch["segments"].to(device, non_blocking=True), attn_impl(core))
        kwargs["position_ids"] = batch["position_ids"].to(device, non_blocking=True)
    else:
        kwargs["attention_mask"] = batch["attention_mask"].to(device, non_blocking=True)
    targets = batch["labels"][:, 1:]
    flat = targets.reshape(-1)
    where = (flat != -100).nonzero().squeeze(1)
    n = int(where.numel())
    where_dev = where.to(device, non_blocking=True)
    wanted = flat.index_select(0, where).to(device, non_blocking=True)
    if _lm_head_skippable(core):
        out = model(**kwargs, output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1][:, :-1]
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, where_dev)
        logits = core.get_output_embeddings()(hidden)
    else:
        out = model(**kwargs)
        logits = out.logits[:, :-1]
        logits = logits.reshape(-1, logits.shape[-1]).index_select(0, where_dev)
    loss = F.cross_entropy(logits.float(), wanted, reduction="sum")
    return loss, n


def flops_per_token(n_params, config, seq_len):
    """6N + 12·L·H·Q·T (nanoGPT estimate_mfu): forward and backward of a dense transformer."""
    n_layer = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    n_head = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1)
    d = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    return 6 * n_params + 12 * n_layer * n_head * (d // max(n_head, 1)) * seq_len
