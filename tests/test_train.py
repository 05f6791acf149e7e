"""Training: schedule, SFT masking, LoRA merge parity (the stage on Ray Train workers: test_resilience,
test_job_submit)."""
from __future__ import annotations

import json

import pytest
import torch

from actors.common.config import from_dict
from actors.data.synthetic import generate
from actors.model import Transformer, get_config, load_hf, save_hf
from actors.model.tokenizer import load_tokenizer, train_tokenizer
from actors.train.config import FinetuneConfig
from actors.train.schedule import lr_at
from actors.train.sft import collate, tokenize_conversation
from actors.train.finetune import wrap_lora


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, data_root):
    text = (data_root / "tinyshakespeare" / "input.txt").read_text()[:200_000].split("\n\n")
    train, _ = generate(50, 0, seed=3)
    text += [json.dumps(r["messages"]) for r in train]
    return train_tokenizer(text, 600, tmp_path_factory.mktemp("tok"))


def test_warmup_then_cosine_schedule():
    lrs = [lr_at(s, 100, 1e-3, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)  # decays to lr * min_lr_ratio
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_sft_labels_cover_only_assistant_turns(tok_dir):
    tok = load_tokenizer(tok_dir)
    train, _ = generate(1, 0, seed=5)
    ex = tokenize_conversation(tok, train[0], max_len=512)
    trained = tok.decode([t for t in ex["labels"] if t != -100])
    assert "<tool_call>" in trained and train[0]["expression"] in trained
    assert train[0]["messages"][-1]["content"] in trained
    assert train[0]["messages"][0]["content"] not in trained  # the user's question is context, not target
    assert "calculator" in tok.decode(ex["input_ids"])  # tool specs are in the prompt
    batch = collate([ex, {"input_ids": ex["input_ids"][:5], "labels": ex["labels"][:5]}], tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(ex["input_ids"]))
    assert (batch["labels"][1, 5:] == -100).all()


def test_sft_sources_are_counted_and_a_too_short_max_len_fails_early(tok_dir, tmp_path):
    from actors.data.synthetic import write_jsonl
    from actors.train.sft import check_sources_fit, load_examples, tokenize_conversation

    tok = load_tokenizer(tok_dir)
    train, _ = generate(6, 0, seed=7)
    path = str(write_jsonl(train, tmp_path / "arith.jsonl"))
    n = min(len(tokenize_conversation(tok, r, 1 << 20)["input_ids"]) for r in train)
    examples, stats = load_examples(tok, [(path, 6)], max_len=n - 2)  # cuts the final answer, keeps the call
    assert stats == {"arith": {"rows": 6, "kept": 6, "truncated": 6, "skipped": 0}}
    assert all(len(e["input_ids"]) == n - 2 for e in examples)
    _, half = load_examples(tok, [(path, 6)], max_len=4096, rank=1, world=2)
    assert half["arith"] == {"rows": 3, "kept": 3, "truncated": 0, "skipped": 0}
    prompt_only = n - 60  # the system turn with the tool schemas alone is most of the conversation
    with pytest.raises(ValueError, match=r"finetune\.max_len=.*--set finetune\.max_len="):
        check_sources_fit(tok, [(path, 6)], max_len=prompt_only)
    check_sources_fit(tok, [(path, 6)], max_len=n)


def test_sparse_sft_loss_equals_the_dense_loss_and_its_grads():
    """The trainer's loss (the model's fused chunked projection + cross-entropy, logits only where a token is
    trained for SFT) equals the unfused full-logits loss, and so do its gradients."""
    from tests.helpers import causal_lm_loss
    from actors.train.trainer import CausalLMLoss

    torch.manual_seed(0)
    cfg = get_config("debug", vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2)
    model = Transformer(cfg)
    x = torch.randint(0, 300, (3, 17))
    labels = x.clone()
    labels[0, :9] = -100
    labels[1, 4:11] = -100
    labels[2, :] = -100
    labels[2, 16] = x[2, 16]  # one trained token, the last position
    dense = causal_lm_loss(model(x), labels)
    dense.backward()
    g_dense = {n: p.grad.clone() for n, p in model.named_parameters()}
    for sparse in (True, False):
        model.zero_grad()
        loss_sum, n = CausalLMLoss(sparse=sparse)(model, {"input_ids": x, "labels": labels})
        (loss_sum / n).backward()
        assert n == 1 + 8 + 9  # trained next tokens: row 2 one, row 1 positions 11-16 + 1-3, row 0 9-16
        assert (loss_sum / n).item() == pytest.approx(dense.item(), rel=1e-6)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, g_dense[name], atol=1e-6, rtol=1e-5)


def test_lora_merge_matches_unmerged_adapter(tmp_path):
    torch.manual_seed(0)
    cfg = get_config("debug", vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2)
    model = wrap_lora(Transformer(cfg), from_dict(FinetuneConfig, {}))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; give the adapter a real effect
            torch.nn.init.normal_(p, 0.0, 0.05)
    x = torch.randint(0, 300, (2, 21))
    with torch.no_grad():
        adapted = model(x)
        merged = model.merge_and_unload()
        out = merged(x)
    torch.testing.assert_close(out, adapted, atol=1e-5, rtol=1e-5)
    save_hf(merged, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(load_hf(tmp_path)(x), adapted, atol=1e-5, rtol=1e-5)
