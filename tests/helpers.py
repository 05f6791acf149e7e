"""Helpers shared by several test files (fixtures live in conftest.py).

- `make_tiny_model`: trains a small tokenizer and overfits a 2-layer model on one synthetic tool-call conversation,
  so greedy decoding of that prompt really emits a `<tool_call>` turn (test_engine, test_serve, test_serve_failover,
  test_agent_e2e).
- `causal_lm_loss` / `token_loss_sum`: the plain next-token cross-entropy over full logits, the reference the
  model's fused loss path is checked against (production code computes its losses in actors/train/losses.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

SHAKESPEARE = Path(__file__).resolve().parent.parent.parent / "shared/data/tinyshakespeare/input.txt"


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Summed next-token cross-entropy: logits[:, t] predicts labels[:, t + 1]; `ignore_index` labels (prompt,
    padding) are not trained."""
    logits = logits[:, :-1].reshape(-1, logits.size(-1))  # (B*(T-1), V)
    return F.cross_entropy(logits.float(), labels[:, 1:].reshape(-1), ignore_index=ignore_index, reduction="sum")


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """`token_loss_sum` as the mean over trained tokens."""
    n = (labels[:, 1:] != ignore_index).sum().clamp(min=1)
    return token_loss_sum(logits, labels, ignore_index) / n


@dataclass
class TinyModel:
    dir: Path
    record: dict                 # the synthetic conversation the model was overfit on
    prompt_messages: list[dict]  # messages before its tool-call turn


def _shakespeare_path() -> Path:
    import cluster

    p = Path(cluster.data_root()) / "tinyshakespeare" / "input.txt"
    return p if p.exists() else SHAKESPEARE


def make_tiny_model(root: Path, steps: int = 200) -> TinyModel:
    """Build (once per pytest session: cached under `root`) a tiny model that emits a real tool call."""
    from actors.data import synthetic
    from actors.model import Transformer, get_config, save_hf
    from actors.model.tokenizer import EOS, load_tokenizer, train_tokenizer

    train, _ = synthetic.generate(20, 0, seed=0)
    record = train[0]
    tm = TinyModel(root / "tiny-model" / "hf", record, record["messages"][:1])
    if (tm.dir / "model.safetensors").exists():
        return tm
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster than two on a shared 2-core box
    try:
        text = _shakespeare_path().read_text()[:200_000]
        # shakespeare for general text, the synthetic records so JSON/tool markup gets merged tokens
        docs = [text[i:i + 2000] for i in range(0, len(text), 2000)]
        docs += [json.dumps(r["messages"]) for r in train] + [json.dumps(synthetic.TOOLS)] * 20
        tok_dir = train_tokenizer(docs, 1000, root / "tiny-model" / "tokenizer")
        tok = load_tokenizer(tok_dir)
        eos = tok.convert_tokens_to_ids(EOS)
        cfg = get_config("debug", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=eos, pad_token_id=eos)
        model = Transformer(cfg)
        convo = tok.apply_chat_template(record["messages"][:2], tools=synthetic.TOOLS, tokenize=False)
        x = torch.tensor([tok(convo, add_special_tokens=False)["input_ids"]])  # (1, T)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = causal_lm_loss(model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
        save_hf(model.eval(), tm.dir, tokenizer_dir=tok_dir)
    finally:
        torch.set_num_threads(threads)
    return tm


ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out: Path, seed: int, r: int = 8, targets: list[str] = ALL_PROJ,
                 dora: bool = False, std: float = 0.05) -> Path:
    """A peft LoRA (or DoRA) adapter folder over the HF model at `base_dir`, with random A and B (peft starts B
    at zero, which would change nothing), saved by peft itself."""
    from peft import LoraConfig, get_peft_model

    from actors.model import load_hf

    model = get_peft_model(load_hf(base_dir), LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets,
                                                         use_dora=dora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "magnitude" in n:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
    model.save_pretrained(str(out))
    return out
