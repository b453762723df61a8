"""Dataset reading, prompt/response formatting, masking, truncation and packing.

Labels are aligned with input_ids (the loss predicts labels[i + 1] from position i); prompt
positions carry -100 so only the response and its end-of-sequence token are learnt.
"""

import hashlib
import json
import random
import re
from dataclasses import dataclass

import torch

from .errors import INVALID_DATASET, INVALID_MODEL, BadInput

IGNORE = -100


@dataclass
class Pair:
    line: int
    prompt: list  # chat messages [{"role", "content"}, ...] before the response
    response: str


@dataclass
class Example:
    input_ids: list
    labels: list
    pair_index: int

    def __len__(self):
        return len(self.input_ids)

    @property
    def n_targets(self):
        # labels[0] is never a target: nothing precedes it.
        return sum(1 for t in self.labels[1:] if t != IGNORE)


ROLES = ("system", "user", "assistant", "tool")


def _content(value, line, where):
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: [{"type": "text", "text": ...}]
        parts = []
        for part in value:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise BadInput(INVALID_DATASET, f"line {line}: {where}: only text content parts are supported")
        return "".join(parts)
    raise BadInput(INVALID_DATASET, f"line {line}: {where}: content must be a string or text parts")


def parse_record(obj, line):
    """One record, by the rules the service's validator shares (testdata/dataset/README.md):
    {"prompt", "response"} non-blank strings, or "messages" ending on a non-blank assistant
    turn after at least one other message."""
    if not isinstance(obj, dict):
        raise BadInput(INVALID_DATASET, f"line {line}: not a JSON object")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise BadInput(INVALID_DATASET, f"line {line}: \"messages\" must be a non-empty array")
        clean = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise BadInput(INVALID_DATASET, f"line {line}: messages[{i}] is not an object")
            for field in ("role", "content"):
                if field not in m:
                    raise BadInput(INVALID_DATASET, f"line {line}: messages[{i}]: missing field \"{field}\"")
            if not isinstance(m["role"], str):
                raise BadInput(INVALID_DATASET, f"line {line}: messages[{i}]: role must be a string")
            if m["role"] not in ROLES:
                # The role is the client's data: never echoed.
                raise BadInput(INVALID_DATASET, f"line {line}: messages[{i}]: unknown role (want {', '.join(ROLES)})")
            clean.append({"role": m["role"], "content": _content(m["content"], line, f"messages[{i}]")})
        if len(clean) < 2:
            raise BadInput(INVALID_DATASET, f"line {line}: \"messages\" needs at least a prompt turn and an assistant turn")
        last = clean[-1]
        if last["role"] != "assistant" or not last["content"].strip():
            raise BadInput(INVALID_DATASET, f"line {line}: the last message must be a non-empty assistant turn")
        return Pair(line, clean[:-1], last["content"])
    for field in ("prompt", "response"):
        if field not in obj:
            raise BadInput(INVALID_DATASET, f"line {line}: missing field \"{field}\"")
        if not isinstance(obj[field], str):
            raise BadInput(INVALID_DATASET, f"line {line}: field \"{field}\" must be a string")
        if not obj[field].strip():
            raise BadInput(INVALID_DATASET, f"line {line}: field \"{field}\" is empty")
    return Pair(line, [{"role": "user", "content": obj["prompt"]}], obj["response"])


def load_pairs(path):
    """Reads a JSONL dataset; returns (pairs, sha256 of the file). Blank lines are skipped."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise BadInput(INVALID_DATASET, f"dataset not found: {path}") from None
    except IsADirectoryError:
        raise BadInput(INVALID_DATASET, f"dataset is a directory: {path}") from None
    except OSError as e:
        raise BadInput(INVALID_DATASET, f"read dataset: {e.strerror or e}") from None
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInput(INVALID_DATASET, f"dataset is not UTF-8 (byte {e.start})") from None
    pairs = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise BadInput(INVALID_DATASET, f"line {n}: not valid JSON ({e.msg})") from None
        pairs.append(parse_record(obj, n))
    if not pairs:
        raise BadInput(INVALID_DATASET, "dataset is empty")
    return pairs, digest


# Private-use code points around a message index: stand-ins for content when the chat template
# is rendered to find where each message's content lands.
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARK = re.compile(_OPEN + r"(\d+)" + _CLOSE)


def _content_spans(skeleton, text, contents):
    """Where the contents lie in ``text``, the template rendered with the real contents, given
    ``skeleton``, the same template rendered with placeholders. The template may strip a
    content's surrounding whitespace. Returns None when ``text`` does not follow the skeleton
    (the template changes content in another way or branches on it)."""
    if any(_OPEN in c or _CLOSE in c for c in contents):
        return None
    parts = _MARK.split(skeleton)  # literal, index, literal, index, ..., literal
    if not text.startswith(parts[0]):
        return None
    pos, spans = len(parts[0]), []
    for k in range(1, len(parts), 2):
        i, after = int(parts[k]), parts[k + 1]
        if i >= len(contents):
            return None
        c = contents[i]
        last = k + 2 >= len(parts)
        for x in dict.fromkeys((c, c.strip(), c.lstrip(), c.rstrip())):
            end = pos + len(x)
            if text.startswith(x, pos) and text.startswith(after, end) and \
                    (not last or end + len(after) == len(text)):
                break
        else:
            return None
        spans.append((pos, end))
        pos = end + len(after)
    return spans if pos == len(text) else None


class Formatter:
    """Turns pairs into token ids. Tokenizers with a chat template use it (the response is what
    the template adds after the generation prompt); others (DialoGPT) get
    ``turn <eos> turn <eos> ... response <eos>``. Either way the response ends with eos.

    Text from the data never becomes a control token: a prompt or answer that contains a special
    token's string (GPT-2's ``<|endoftext|>``) is tokenized as ordinary text, while the special
    tokens the template itself writes stay special."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        if tokenizer.eos_token_id is None:
            raise BadInput(INVALID_MODEL, "tokenizer has no end-of-sequence token")
        self.eos = tokenizer.eos_token_id
        self.use_template = bool(getattr(tokenizer, "chat_template", None))
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.special_ids = {i for i, t in added.items() if getattr(t, "special", False)}
        self.special_ids |= set(tokenizer.all_special_ids)
        strings = {s for s in tokenizer.convert_ids_to_tokens(sorted(self.special_ids)) if s}
        strings = sorted(strings, key=lambda s: (-len(s), s))  # longest first, as tokenizers match
        self._special_re = re.compile("|".join(map(re.escape, strings))) if strings else None

    def _ids(self, text):
        return self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def _render(self, messages, generation_prompt):
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _rendered(self, messages, generation_prompt):
        """The template's text and the character spans of the messages' content in it (none
        when no content holds a special token's string: the template's tokens are then the
        tokenizer's own, exactly)."""
        text = self._render(messages, generation_prompt)
        contents = [m["content"] for m in messages]
        if self._special_re is None or not any(self._special_re.search(c) for c in contents):
            return text, []
        marked = [dict(m, content=f"{_OPEN}{i}{_CLOSE}") for i, m in enumerate(messages)]
        skeleton = self._render(marked, generation_prompt)
        spans = _content_spans(skeleton, text, contents)
        if spans is not None:
            return text, spans
        # The template transforms content in a way _content_spans does not follow: put each
        # content verbatim where the template puts it, so that its extent is known.
        parts = _MARK.split(skeleton)
        text, spans = parts[0], []
        for k in range(1, len(parts), 2):
            c = contents[int(parts[k])]
            spans.append((len(text), len(text) + len(c)))
            text += c + parts[k + 1]
        return text, spans

    def _encode(self, text, spans):
        """Tokenizes rendered template text as the tokenizer would, except that a special token
        overlapping a content span is replaced by its string's ordinary tokens."""
        if not spans:
            return self.tok(text, add_special_tokens=False)["input_ids"]
        if getattr(self.tok, "is_fast", False):
            enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = []
            for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
                if t in self.special_ids and any(a < e and s < b for s, e in spans):
                    ids += self._ids(text[a:b])
                else:
                    ids.append(t)
            return ids
        # Slow tokenizers give no offsets. They tokenize the text between special tokens piece by
        # piece, so cutting at the special tokens the template wrote (outside the content) and
        # tokenizing each piece with special strings as text gives the same ids, content excepted.
        ids, pos, bounds = [], 0, [0] + [x for span in spans for x in span] + [len(text)]
        for a, b in zip(bounds[::2], bounds[1::2]):  # the template's own text
            for m in self._special_re.finditer(text, a, b):
                ids += self._ids(text[pos:m.start()]) if m.start() > pos else []
                ids.append(self.tok.convert_tokens_to_ids(m.group()))
                pos = m.end()
        return ids + (self._ids(text[pos:]) if pos < len(text) else [])

    def _template(self, messages, generation_prompt):
        return self._encode(*self._rendered(messages, generation_prompt))

    def prompt_ids(self, messages):
        if self.use_template:
            return self._template(messages, True)
        ids = []
        for m in messages:
            ids += self._ids(m["content"]) + [self.eos]
        return ids

    def response_ids(self, messages, response):
        if self.use_template:
            prompt = self._template(messages, True)
            full_text, full_spans = self._rendered(messages + [{"role": "assistant", "content": response}], False)
            full = self._encode(full_text, full_spans)
            if full[: len(prompt)] == prompt:
                ids = full[len(prompt):]
            else:  # the template re-renders earlier turns; fall back to the text difference
                p = self._render(messages, True)
                if full_text.startswith(p):
                    n = len(p)
                    ids = self._encode(full_text[n:], [(max(s - n, 0), e - n) for s, e in full_spans if e > n])
                else:
                    ids = self._ids(response)
            # Keep up to the turn's last eos (templates may add a newline after it).
            if self.eos in ids:
                return ids[: len(ids) - ids[::-1].index(self.eos)]
            return ids + [self.eos]
        return self._ids(response) + [self.eos]

    def encode(self, pair):
        return self.prompt_ids(pair.prompt), self.response_ids(pair.prompt, pair.response)


def build_example(prompt_ids, response_ids, max_len, pair_index=-1):
    """Joins prompt and response, truncating the prompt from the left. Returns None when the
    response does not fit with at least one prompt token before it (it is never cut)."""
    if len(response_ids) >= max_len:
        return None
    keep = max_len - len(response_ids)
    prompt = prompt_ids[-keep:] if prompt_ids else []
    return Example(list(prompt) + list(response_ids), [IGNORE] * len(prompt) + list(response_ids), pair_index)


def encode_pairs(formatter, pairs):
    return [formatter.encode(p) for p in pairs]


def make_examples(encoded, max_len):
    """Returns (examples, skipped pair indices)."""
    examples, skipped = [], []
    for i, (p, r) in enumerate(encoded):
        ex = build_example(p, r, max_len, i)
        if ex is None:
            skipped.append(i)
        else:
            examples.append(ex)
    return examples, skipped


def split(examples, eval_fraction, seed):
    """Deterministic held-out split: at least one eval example when there are 10 or more."""
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    n_eval = int(round(len(examples) * eval_fraction)) if eval_fraction > 0 else 0
    if eval_fraction > 0 and n_eval == 0 and len(examples) >= 10:
        n_eval = 1
    n_eval = min(n_eval, len(examples) - 1)
    ev = sorted(idx[:n_eval])
    tr = sorted(idx[n_eval:])
    return [examples[i] for i in tr], [examples[i] for i in ev]


def epoch_order(n, seed, epoch):
    """The shuffled order of the training examples for one epoch (a pure function of seed and
    epoch, so a resumed run sees the same order)."""
    idx = list(range(n))
    random.Random(seed * 1000003 + epoch).shuffle(idx)
    return idx


def _bins(examples, max_len):
    """First-fit decreasing: packs examples into rows of at most max_len tokens."""
    rows = []
    for ex in sorted(examples, key=len, reverse=True):
        for row in rows:
            if row[0] + len(ex) <= max_len:
                row[0] += len(ex)
                row[1].append(ex)
                break
        else:
            rows.append([len(ex), [ex]])
    return [r[1] for r in rows]


def block_causal_mask(segments, attn_impl="sdpa"):
    """``[rows, 1, L, L]`` mask: position i sees j when j <= i and both belong to the same
    example. Boolean for SDPA; additive float (0 / -inf-ish) for eager attention."""
    L = segments.shape[1]
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.ones((L, L), dtype=torch.bool, device=segments.device).tril()
    mask = (same & causal)[:, None, :, :]
    if attn_impl != "sdpa":
        mask = torch.zeros(mask.shape, dtype=torch.float32, device=segments.device).masked_fill(
            ~mask, torch.finfo(torch.float32).min)
    return mask


def collate(examples, max_len, pad_id, pack=True):
    """Builds one micro-batch.

    Packed: several examples share a row; ``position_ids`` restart at 0 for each example and a
    block-diagonal causal mask ``[rows, 1, L, L]`` stops any example attending to another
    (padding positions attend only to themselves). Unpacked: one example per row, right
    padding and the usual 2-D attention mask.
    """
    rows = _bins(examples, max_len) if pack else [[ex] for ex in examples]
    L = max(sum(len(e) for e in r) for r in rows)
    R = len(rows)
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    labels = torch.full((R, L), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((R, L), dtype=torch.long)
    segments = torch.empty((R, L), dtype=torch.long)
    for r, row in enumerate(rows):
        pos = 0
        for s, ex in enumerate(row):
            n = len(ex)
            input_ids[r, pos:pos + n] = torch.tensor(ex.input_ids)
            labels[r, pos:pos + n] = torch.tensor(ex.labels)
            # An example's first label is never a target (Example.n_targets): in a packed row
            # it would be the target of the previous example's last position.
            labels[r, pos] = IGNORE
            position_ids[r, pos:pos + n] = torch.arange(n)
            segments[r, pos:pos + n] = s
            pos += n
        segments[r, pos:] = -1 - torch.arange(L - pos)  # each padding token is its own segment
    batch = {"input_ids": input_ids, "labels": labels}
    if pack:
        # The [rows, 1, L, L] mask is built on the device from these (block_causal_mask).
        batch["segments"] = segments
        batch["position_ids"] = position_ids
    else:
        batch["attention_mask"] = (segments >= 0).long()
    batch["n_tokens"] = int(sum(len(e) for e in examples))
    batch["n_targets"] = int(sum(e.n_targets for e in examples))
    return batch


def flatten(examples):
    """Builds one micro-batch for variable-length attention: every example back to back in a
    single row with no padding, ``position_ids`` restarting at 0 for each, and the examples'
    boundaries as ``cu_seqlens`` (int32 offsets, the first 0 and the last the row's length) and
    ``max_seqlen``. No mask is built: the attention kernel keeps each example to itself."""
    lengths = [len(e) for e in examples]
    T = sum(lengths)
    input_ids = torch.empty((1, T), dtype=torch.long)
    labels = torch.empty((1, T), dtype=torch.long)
    position_ids = torch.empty((1, T), dtype=torch.long)
    pos = 0
    for ex, n in zip(examples, lengths):
        input_ids[0, pos:pos + n] = torch.tensor(ex.input_ids)
        labels[0, pos:pos + n] = torch.tensor(ex.labels)
        labels[0, pos] = IGNORE  # never a target; it would be the previous example's (collate)
        position_ids[0, pos:pos + n] = torch.arange(n)
        pos += n
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "cu_seqlens": cu,
            "max_seqlen": max(lengths), "n_tokens": T, "n_targets": int(sum(e.n_targets for e in examples))}
