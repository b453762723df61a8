import os

from conftest import SAMPLE

from understudy_trainer.train import file_list


def test_tiny_model_is_deterministic_and_loads(tmp_path, tiny_model):
    import make_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    again = make_tiny_model.build(make_tiny_model.texts_from_jsonl(SAMPLE), str(tmp_path / "again"))
    assert file_list(again) == file_list(tiny_model)
    tok = AutoTokenizer.from_pretrained(again)
    model = AutoModelForCausalLM.from_pretrained(again)
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    assert not getattr(tok, "chat_template", None)
    assert model.config.model_type == "gpt2" and 2 <= model.config.n_layer <= 4
    assert 64 <= model.config.n_embd <= 128
    assert "model.safetensors" in os.listdir(again)
    # The tokenizer was trained on the sample: its words are few tokens each.
    assert len(tok("The capital of France is Paris.")["input_ids"]) <= 10
