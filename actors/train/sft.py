"""SFT examples: conversations rendered with the chat template; loss only on assistant tokens."""
from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import torch

from actors.common.metrics import read_jsonl
from actors.model.chat import chat_ids_and_mask


def _render(tok, record: dict) -> tuple[list[int], list[int]]:
    """The whole conversation through the chat template: token ids and the assistant-token mask (works for
    any template, with or without `{% generation %}` markers: actors.model.chat)."""
    return chat_ids_and_mask(tok, record["messages"], record.get("tools"))


def _example(ids: list[int], mask: list[int], max_len: int) -> dict | None:
    ids, mask = ids[:max_len], mask[:max_len]
    if not any(mask[1:]):  # position 0 is never a target
        return None
    return {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]}


def tokenize_conversation(tok, record: dict, max_len: int) -> dict | None:
    """input_ids + labels (-100 outside assistant turns), truncated to max_len; None if nothing to learn."""
    return _example(*_render(tok, record), max_len)


def load_examples(tok, sources: list[tuple[str, int]], max_len: int, rank: int = 0,
                  world: int = 1) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """This rank's 1/world of every source (rows rank::world), tokenized, with per-source counts:
    rows = kept + skipped (no assistant token within max_len); truncated = kept rows cut to max_len."""
    examples, stats = [], {}
    for path, cap in sources:
        st = stats.setdefault(Path(path).stem, {"rows": 0, "kept": 0, "truncated": 0, "skipped": 0})
        for rec in read_jsonl(path, cap)[rank::world]:
            st["rows"] += 1
            ids, mask = _render(tok, rec)
            ex = _example(ids, mask, max_len)
            if ex is None:
                st["skipped"] += 1
                continue
            st["kept"] += 1
            st["truncated"] += len(ids) > max_len
            examples.append(ex)
    return examples, stats


def check_sources_fit(tok, sources: list[tuple[str, int]], max_len: int, sample: int = 32) -> None:
    """Fail before any worker starts when max_len leaves no assistant token in a source's first rows
    (e.g. tool-call records whose system prompt alone is ~430 tokens, with max_len 384)."""
    for path, cap in sources:
        rendered = [_render(tok, r) for r in read_jsonl(path, min(cap, sample))]
        if rendered and not any(any(mask[1:]) for _, mask in rendered):
            raise ValueError(f"{path}: no assistant tokens in its first {len(rendered)} conversations even "
                             "untruncated; the records need assistant turns (role 'assistant' with content or "
                             "tool_calls)")
        if rendered and all(_example(ids, mask, max_len) is None for ids, mask in rendered):
            need = min(len(ids) for ids, _ in rendered)
            raise ValueError(f"finetune.max_len={max_len} cuts every assistant turn of {path} (its first "
                             f"{len(rendered)} conversations need {need}+ tokens): set --set finetune.max_len="
                             f"{1 << (need - 1).bit_length()} or shorten the records")


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    T = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), -100, dtype=torch.long)
    for i, e in enumerate(examples):  # right padding: causal attention never looks at later pad tokens
        ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        labels[i, : len(e["labels"])] = torch.tensor(e["labels"])
    return {"input_ids": ids, "labels": labels}


def sft_batches(examples: list[dict], batch_size: int, pad_id: int, seed: int,
                group_by_length: int = 16) -> Iterator[dict]:
    """Endless shuffled batches; each epoch reshuffles (seeded, so every run is reproducible).

    Length-grouped (HF `group_by_length`, LLaMA-Factory's default): each window of `group_by_length` batches of
    shuffled examples is sorted by length and cut into batches whose order is shuffled again, so a 160-token
    tool call is rarely padded to a 380-token conversation (padding cost ~40% of a mixed step). 1 disables it."""
    if not examples:
        raise RuntimeError("no SFT examples for this worker: check finetune sources and max_len")
    rng = random.Random(seed)
    window = batch_size * max(1, group_by_length)
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        batches = []
        for w in range(0, len(order), window):
            chunk = sorted(order[w:w + window], key=lambda j: len(examples[j]["input_ids"]))
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        batches = [b for b in batches if len(b) == batch_size] or batches[:1]  # full batches only
        rng.shuffle(batches)
        for b in batches:
            yield collate([examples[j] for j in b], pad_id)
