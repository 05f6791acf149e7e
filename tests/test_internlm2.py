"""InternLM2 / InternLM2.5 folders (actors/model/internlm2.py): a small random model written in InternLM2's layout
(config.json keys, packed wqkv, SentencePiece tokenizer.model) comes back through the real loading paths with the
original's weights, logits and token ids; dynamic (NTK) RoPE matches transformers'. No Ray."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from actors.model import Transformer, load_hf
from actors.model.config import ModelConfig
from actors.model.internlm2 import (InternLM2FormatError, pack_wqkv, save_internlm2, split_wqkv,
                                    internlm2_config_dict)
from actors.model.registry import ModelSpecError, resolve_model, sha256_file, spec_problem

spm = pytest.importorskip("sentencepiece")

# InternLM2's tokenizer.model holds placeholders ([UNUSED_TOKEN_14x]) that its tokenizer_config.json renames
PLACEHOLDERS = ["[UNUSED_TOKEN_145]", "[UNUSED_TOKEN_146]"]
TEXTS = ["Hello world, this is a test of the tokenizer.", "To be, or not to be: that is the question 1234.",
         "  leading spaces and  double  spaces ", "子曰：学而时习之，不亦说乎？有朋自远方来，不亦乐乎？",
         "mixed 中文 and English, 天地玄黄 ok", "tab\tnew\nline ä ö ü ß é 😀"]


def tiny_config(vocab_size: int, **kw) -> ModelConfig:
    base = dict(name="tiny-internlm2", vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                rope_theta=10000.0, rope_type="dynamic", rope_factor=2.0, rms_norm_eps=1e-5,
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return ModelConfig(**{**base, **kw})


def random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """Weights large enough that attention is far from uniform (a q/k/v mix-up then moves the logits a lot);
    norm gains not all ones (so input/post-attention norms cannot be swapped unnoticed)."""
    torch.manual_seed(seed)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    return m


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory, data_root):
    """A tiny SentencePiece BPE trained like InternLM2's (identity normalizer, dummy prefix, byte fallback, split
    digits), on English and Chinese lines of the shared data."""
    en = (data_root / "tinyshakespeare" / "input.txt").read_text()[:20000]
    zh = (data_root / "zh_classical" / "zh_classical.txt").read_text()[:6000]
    lines = [line for line in (en + "\n" + zh).splitlines() if line.strip()]
    out = tmp_path_factory.mktemp("spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(out / "tokenizer"), vocab_size=1200, model_type="bpe",
        byte_fallback=True, character_coverage=0.98, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, user_defined_symbols=PLACEHOLDERS, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, minloglevel=2, num_threads=1)
    return out / "tokenizer.model"


@pytest.fixture(scope="module")
def internlm2(tmp_path_factory, spm_model):
    """(folder, original model): the model saved as InternLM2 does (config.json keys incl. rope_scaling
    {"type": "dynamic", "factor": 2.0}, packed wqkv, tokenizer.model + tokenizer_config.json)."""
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    model = random_model(tiny_config(sp.get_piece_size()))
    ids = [sp.piece_to_id(p) for p in PLACEHOLDERS]
    tok_cfg = {"tokenizer_class": "InternLM2Tokenizer", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>",
               "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
               "added_tokens_decoder": {str(ids[0]): {"content": "<|im_end|>", "special": True},
                                        str(ids[1]): {"content": "<|im_start|>", "special": True}}}
    folder = save_internlm2(model, tmp_path_factory.mktemp("src") / "internlm2_5-tiny", tokenizer_model=spm_model,
                            tokenizer_config=tok_cfg)
    return folder, model


def test_wqkv_layout_is_internlm2s(internlm2):
    """pack/split follow modeling_internlm2.py: qkv rows viewed as (kv heads, q_per_kv + 2, head_dim), queries
    first, then the group's key and value head."""
    _, model = internlm2
    cfg = model.config
    a = model.model.layers["0"].self_attn
    q, k, v = a.q_proj.weight.detach(), a.k_proj.weight.detach(), a.v_proj.weight.detach()
    wqkv = pack_wqkv(q, k, v, cfg)
    nkv, hd, g = cfg.num_key_value_heads, cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads
    assert wqkv.shape == (nkv * (g + 2) * hd, cfg.hidden_size)
    x = torch.randn(2, 5, cfg.hidden_size)
    # InternLM2Attention.forward: rearrange(qkv, "b q (h gs d) -> b q h gs d", gs=2 + groups, d=head_dim)
    qkv = (x @ wqkv.T).view(2, 5, nkv, g + 2, hd)
    torch.testing.assert_close(qkv[..., :g, :].reshape(2, 5, -1, hd), (x @ q.T).view(2, 5, -1, hd))
    torch.testing.assert_close(qkv[..., -2, :], (x @ k.T).view(2, 5, nkv, hd))
    torch.testing.assert_close(qkv[..., -1, :], (x @ v.T).view(2, 5, nkv, hd))
    assert all(torch.equal(a, b) for a, b in zip(split_wqkv(wqkv, cfg), (q, k, v)))


def test_internlm2_folder_layout(internlm2):
    folder, model = internlm2
    from safetensors import safe_open

    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["InternLM2ForCausalLM"] and cfg["model_type"] == "internlm2"
    assert cfg["rope_scaling"] == {"type": "dynamic", "factor": 2.0} and cfg["bias"] is False
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert {"model.tok_embeddings.weight", "output.weight", "model.norm.weight",
            "model.layers.1.attention.wqkv.weight", "model.layers.1.attention.wo.weight",
            "model.layers.1.attention_norm.weight", "model.layers.1.ffn_norm.weight",
            "model.layers.1.feed_forward.w1.weight", "model.layers.1.feed_forward.w2.weight",
            "model.layers.1.feed_forward.w3.weight"} <= names
    assert not any("q_proj" in n or "embed_tokens" in n for n in names)
    assert not (folder / "tokenizer.json").exists()


def test_load_hf_reads_internlm2_folder(internlm2):
    folder, model = internlm2
    ours = load_hf(folder)
    assert ours.config.rope_type == "dynamic" and ours.config.rope_factor == 2.0
    assert ours.config.num_key_value_heads == 2 and not ours.config.tie_word_embeddings
    ref = model.state_dict()
    got = ours.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    x = torch.randint(0, model.config.vocab_size, (2, 100))  # past max_position_embeddings=64: dynamic RoPE
    with torch.no_grad():
        torch.testing.assert_close(ours(x), model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x[:, :40]), model(x[:, :40]), atol=1e-5, rtol=1e-5)


def test_pytorch_bin_shards_convert_too(internlm2, tmp_path):
    """Early InternLM2 releases ship pytorch_model-*.bin shards with an index instead of safetensors."""
    from safetensors.torch import load_file

    folder, model = internlm2
    binned = shutil.copytree(folder, tmp_path / "bin", ignore=shutil.ignore_patterns("*.safetensors"))
    sd = load_file(str(folder / "model.safetensors"))
    names = sorted(sd)
    half = len(names) // 2
    where = {}
    for i, part in enumerate((names[:half], names[half:])):
        f = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: sd[k] for k in part}, binned / f)
        where.update({k: f for k in part})
    (binned / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": where}))
    x = torch.randint(0, model.config.vocab_size, (1, 70))
    with torch.no_grad():
        torch.testing.assert_close(load_hf(binned)(x), model(x), atol=1e-5, rtol=1e-5)
        out = resolve_model(str(binned), tmp_path / "cache")
        torch.testing.assert_close(load_hf(out)(x), model(x), atol=1e-5, rtol=1e-5)


def test_a_naive_wqkv_split_would_be_caught(internlm2):
    """The logits comparison is sensitive to the layout: q/k/v cut as three consecutive blocks differ a lot."""
    _, model = internlm2
    cfg = model.config
    wrong = random_model(cfg)
    with torch.no_grad():
        for layer in wrong.model.layers.values():
            a = layer.self_attn
            w = pack_wqkv(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, cfg)
            q, k, v = w.split([a.q_proj.weight.shape[0], a.k_proj.weight.shape[0], a.v_proj.weight.shape[0]])
            a.q_proj.weight.copy_(q), a.k_proj.weight.copy_(k), a.v_proj.weight.copy_(v)
        x = torch.randint(0, cfg.vocab_size, (1, 30))
        assert (wrong(x) - model(x)).abs().max() > 0.1


def test_resolve_model_converts_to_a_llama_folder(internlm2, spm_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from actors.model.hf import read_lineage
    from actors.model.tokenizer import load_tokenizer, stop_token_ids

    folder, model = internlm2
    assert spec_problem(str(folder)) is None
    out = resolve_model(str(folder), tmp_path / "cache")
    assert out.parent == tmp_path / "cache" and out.name.startswith("internlm2_5-tiny-internlm2-")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["rope_scaling"] == {"rope_type": "dynamic",
                                                                                     "factor": 2.0}
    imp = read_lineage(out)["import"]
    assert imp["source"] == str(folder.resolve()) and imp["architecture"] == "InternLM2ForCausalLM"
    assert imp["files_sha256"]["tokenizer.model"] == sha256_file(spm_model)
    assert imp["chat_template_from"] == "templates/internlm2.jinja"

    # weights: ours and transformers' Llama (dynamic NTK RoPE past max_position_embeddings) give the original's
    ours = load_hf(out)
    x = torch.randint(0, model.config.vocab_size, (2, 100))
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(ours(x), ref, atol=1e-5, rtol=1e-5)
        hf = AutoModelForCausalLM.from_pretrained(out).eval()
        torch.testing.assert_close(hf(x).logits, ref, atol=1e-5, rtol=1e-5)

    # tokenizer: the same ids as SentencePiece, special tokens atomic, the InternLM2 chat template
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    tok = load_tokenizer(out)
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == sp.decode(ids) == text
    assert any(sp.id_to_piece(i).startswith("<0x") for i in sp.encode(TEXTS[-1]))  # byte fallback exercised
    im_start, im_end = (sp.piece_to_id(p) for p in PLACEHOLDERS[::-1])
    ids = tok.encode("<|im_start|>user\nHi<|im_end|>", add_special_tokens=False)
    assert ids[0] == im_start and ids[-1] == im_end
    assert ids[1:-1] == sp.encode("user\nHi")  # segments between special tokens keep the dummy prefix, as InternLM2's
    assert tok.encode("Hi")[0] == 1  # add_bos_token
    assert im_end in stop_token_ids(tok) and 2 in stop_token_ids(tok)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"

    # reused while the source is unchanged
    stamp = (out / "fullchain.json").stat().st_mtime_ns
    assert resolve_model(str(folder), tmp_path / "cache") == out
    assert (out / "fullchain.json").stat().st_mtime_ns == stamp


def test_dynamic_rope_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import (_compute_dynamic_ntk_parameters,
                                                  _compute_linear_scaling_rope_parameters)

    from actors.model.transformer import RotaryEmbedding

    hd, theta, max_pos = 128, 1_000_000.0, 4096
    hcfg = LlamaConfig(hidden_size=hd * 4, num_attention_heads=4, max_position_embeddings=max_pos,
                       rope_parameters={"rope_type": "dynamic", "rope_theta": theta, "factor": 2.0})
    ours = RotaryEmbedding(hd, theta, "dynamic", 2.0, max_pos)
    for seq_len in (100, max_pos, max_pos + 1, 3 * max_pos + 17):
        ref, _ = _compute_dynamic_ntk_parameters(hcfg, seq_len=seq_len)
        torch.testing.assert_close(ours.dynamic_inv_freq(seq_len), ref, atol=0, rtol=1e-6)
        # forward picks the frequencies from the longest position it is given
        cos, sin = ours(torch.arange(seq_len)[None], torch.float32)
        freqs = (seq_len - 1) * ref
        torch.testing.assert_close(cos[0, -1], torch.cat([freqs, freqs]).cos(), atol=1e-5, rtol=0)
        torch.testing.assert_close(sin[0, -1], torch.cat([freqs, freqs]).sin(), atol=1e-5, rtol=0)
    assert torch.equal(ours.dynamic_inv_freq(100), ours.inv_freq)  # within max_position_embeddings: plain RoPE
    hlin = LlamaConfig(hidden_size=hd * 4, num_attention_heads=4, max_position_embeddings=max_pos,
                       rope_parameters={"rope_type": "linear", "rope_theta": theta, "factor": 4.0})
    torch.testing.assert_close(RotaryEmbedding(hd, theta, "linear", 4.0, max_pos).inv_freq,
                               _compute_linear_scaling_rope_parameters(hlin)[0], atol=0, rtol=1e-6)


def _copy(folder, dst):
    return shutil.copytree(folder, dst)


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_bad_internlm2_folders_fail_with_the_file_and_the_fix(internlm2, tmp_path):
    folder, _ = internlm2
    cache = tmp_path / "cache"

    no_tok = _copy(folder, tmp_path / "no-tokenizer")
    (no_tok / "tokenizer.model").unlink()
    with pytest.raises(ModelSpecError, match=r"no tokenizer\.model .*copy tokenizer\.model from the original"):
        resolve_model(str(no_tok), cache)
    assert "tokenizer.model" in spec_problem(str(no_tok))

    yarn = _copy(folder, tmp_path / "yarn")
    _edit_config(yarn, rope_scaling={"type": "yarn", "factor": 4.0})
    with pytest.raises(InternLM2FormatError, match=r"config\.json: rope_scaling type 'yarn' is not supported"):
        load_hf(yarn)
    assert "rope_scaling" in spec_problem(str(yarn))

    bias = _copy(folder, tmp_path / "bias")
    _edit_config(bias, bias=True)
    with pytest.raises(ModelSpecError, match=r"config\.json: bias=true .* not supported"):
        resolve_model(str(bias), cache)

    heads = _copy(folder, tmp_path / "heads")
    _edit_config(heads, num_key_value_heads=1)
    with pytest.raises(InternLM2FormatError, match=r"attention\.wqkv\.weight: shape .* config\.json's head counts"):
        load_hf(heads)

    no_weights = _copy(folder, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelSpecError, match=r"no weights: expected model\.safetensors"):
        resolve_model(str(no_weights), cache)
    assert not any(".tmp" in p.name for p in cache.glob("*"))  # failed conversions leave nothing behind


def test_internlm2_config_round_trip():
    from actors.model.hf import config_from_hf

    cfg = tiny_config(500, tie_word_embeddings=True)
    back = config_from_hf(internlm2_config_dict(cfg), name=cfg.name)
    assert back == cfg
    with pytest.raises(InternLM2FormatError, match="head_dim"):
        internlm2_config_dict(tiny_config(500, head_dim=32))
