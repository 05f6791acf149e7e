"""The model vs transformers' Llama: same logits both ways (our export -> HF, HF checkpoint -> our loader)."""
from __future__ import annotations

import json

import pytest
import torch

from actors.model import Transformer, get_config, list_configs, load_hf, read_lineage, save_hf
from tests.helpers import causal_lm_loss


@pytest.mark.parametrize("tied", [True, False])
def test_export_loads_in_transformers_with_same_logits(tmp_path, tied):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = get_config("debug", vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    ours = Transformer(cfg).eval()
    save_hf(ours, tmp_path, step=7, lineage=[{"stage": "test"}])
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    x = torch.randint(0, cfg.vocab_size, (2, 29))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-5, rtol=1e-5)
    assert read_lineage(tmp_path)["step"] == 7
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_loads_a_transformers_llama_checkpoint(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    hcfg = LlamaConfig(vocab_size=256, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                       num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=128,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
    hf = LlamaForCausalLM(hcfg).eval()
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert ours.config.rope_theta == 500000.0 and ours.config.num_key_value_heads == 3
    x = torch.randint(0, 256, (3, 17))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-5, rtol=1e-5)


def test_logits_mask_and_attn_mask_match_the_full_forward():
    """`logits_mask` returns only the selected positions' logits; a causal bool `attn_mask` equals the default
    causal SDPA path (generation goes through the serving engine: actors.engine)."""
    torch.manual_seed(0)
    m = Transformer(get_config("debug", vocab_size=200, hidden_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=1, intermediate_size=64)).eval()
    x = torch.randint(0, 200, (2, 23))
    with torch.no_grad():
        full = m(x)
        last = torch.zeros(2, 23, dtype=torch.bool)
        last[:, [4, 22]] = True
        torch.testing.assert_close(m(x, logits_mask=last), full[last])  # only the selected positions' logits
        causal = torch.ones(23, 23, dtype=torch.bool).tril()
        torch.testing.assert_close(m(x, attn_mask=causal[None, None]), full, atol=1e-5, rtol=1e-5)


def test_registry_shapes_have_the_advertised_sizes():
    sizes = {n: get_config(n).num_params() for n in list_configs()}
    assert 1e6 <= sizes["debug"] <= 5e6
    assert 100e6 <= sizes["125m"] <= 150e6
    assert 0.9e9 <= sizes["1b"] <= 1.3e9
    assert 7.0e9 <= sizes["internlm2-7b"] <= 8.0e9   # InternLM2-7B: 7.7B
    assert 7.8e9 <= sizes["llama3-8b"] <= 8.2e9      # Llama-3-8B: 8.03B
    assert Transformer(get_config("debug")).num_params() == sizes["debug"]


def test_bad_model_config_names_the_field():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        get_config("debug", num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="unknown model"):
        get_config("gpt-17")


def test_loss_ignores_masked_labels():
    logits = torch.randn(1, 4, 10)
    labels = torch.tensor([[1, 2, -100, 3]])
    manual = torch.nn.functional.cross_entropy(logits[0, [0, 2]], torch.tensor([2, 3]))
    torch.testing.assert_close(causal_lm_loss(logits, labels), manual)
