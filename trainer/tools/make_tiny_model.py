#!/usr/bin/env python3
"""Builds a small random-init GPT-2 model and a byte-level BPE tokenizer trained on local data,
saved as a Hugging Face directory (AutoModelForCausalLM / AutoTokenizer.from_pretrained).
Deterministic and offline: nothing is downloaded. Used by the tests, `make tiny-model` and
the benchmark (which asks for GPT-2-small dimensions).

    python trainer/tools/make_tiny_model.py --data examples/sample-pairs.jsonl --out build/tiny-gpt2
"""

import argparse
import json
import os
import shutil
import sys

EOS = "<|endoftext|>"


def texts_from_jsonl(path):
    """The prompt and response texts of a pairs or chat JSONL file."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            obj = json.loads(line)
            if "messages" in obj:
                for m in obj["messages"]:
                    c = m.get("content")
                    texts.append(c if isinstance(c, str) else " ".join(p.get("text", "") for p in c))
            else:
                texts += [obj.get("prompt", ""), obj.get("response", "")]
    return texts


def train_tokenizer(texts, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=[EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                             model_max_length=1024)


def build(texts, out, n_layer=2, n_embd=96, n_head=4, n_positions=512, vocab_size=1024, dropout=0.0,
          seed=0, model_vocab_size=None):
    """Writes the model directory ``out`` (replacing it) and returns it."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_tokenizer(texts, vocab_size)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    config = GPT2Config(
        vocab_size=model_vocab_size or len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=eos,
        eos_token_id=eos,
        # Untied: with tied embeddings a random model's greedy choice after <eos> is <eos>
        # again, which would make the untrained model look as if it had learnt to stop.
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = eos
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    os.rename(tmp, out)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build a small random-init GPT-2 model directory.")
    ap.add_argument("--data", required=True, help="JSONL whose texts train the tokenizer")
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--positions", type=int, default=512)
    ap.add_argument("--vocab-size", type=int, default=1024, help="tokenizer vocabulary to train")
    ap.add_argument("--model-vocab-size", type=int, help="model vocabulary (default: the tokenizer's)")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    build(texts_from_jsonl(a.data), a.out, a.layers, a.width, a.heads, a.positions, a.vocab_size, a.dropout,
          a.seed, a.model_vocab_size)
    print(a.out, file=sys.stderr)


if __name__ == "__main__":
    main()
