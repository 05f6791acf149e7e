"""Fine-tuning examples (Ray-free): records rendered through the chat template, loss masks, batches.

Every kind of record (actors.common.formats) becomes token ids with labels (-100 where nothing is trained):
  sft         {"input_ids", "labels"}: every assistant turn trained (per-turn `loss: false` turns, earlier turns
              with mask_history, or everything with train_on_prompt are the options);
  preference  {"chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels"}: only the final answer trained;
  kto         {"input_ids", "labels", "kto_label"}: only the completion (the last assistant turn).
Batches are length-grouped (HF `group_by_length`), and SFT rows may be packed: several samples in one row with
positions restarting per sample and a block-diagonal causal mask, so a packed row computes exactly what the
samples compute alone.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import torch

from actors.common.formats import kind_of
from actors.common.metrics import read_jsonl
from actors.model.chat import chat_ids_and_mask


def _train_flags(messages: list[dict], mask_history: bool) -> list[bool]:
    turns = [m for m in messages if m.get("role") == "assistant"]
    flags = [bool(m.get("loss", True)) for m in turns]
    if mask_history and flags:
        flags = [False] * (len(flags) - 1) + [flags[-1]]
    return flags


def _ids_labels(tok, messages, tools, train, train_on_prompt=False) -> tuple[list[int], list[int]]:
    ids, mask = chat_ids_and_mask(tok, messages, tools, train, train_on_prompt)
    return ids, [t if m else -100 for t, m in zip(ids, mask)]


def _example(ids: list[int], mask: list[int], max_len: int) -> dict | None:
    ids, mask = ids[:max_len], mask[:max_len]
    if not any(mask[1:]):  # position 0 is never a target
        return None
    return {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)], "length": len(ids)}


def tokenize_record(tok, rec: dict, max_len: int, train_on_prompt: bool = False,
                    mask_history: bool = False) -> dict | None:
    """The training example of one record (see the module doc), or None when nothing is trained (an SFT
    conversation whose assistant turns all fall beyond max_len). Longer pairs and KTO rows are cut to max_len
    (`_truncate_answers`)."""
    kind, tools = kind_of(rec), rec.get("tools")
    if kind == "sft":
        ids, mask = chat_ids_and_mask(tok, rec["messages"], tools, _train_flags(rec["messages"], mask_history),
                                      train_on_prompt)
        ex = _example(ids, mask, max_len)
        if ex is not None:
            ex["truncated"] = len(ids) > max_len
        return ex
    if kind == "preference":
        seqs = []
        for side in ("chosen", "rejected"):
            msgs = rec["messages"] + [rec[side]]
            flags = [False] * (sum(m["role"] == "assistant" for m in msgs) - 1) + [True]
            seqs.append(_ids_labels(tok, msgs, tools, flags))
        (ci, cl), (ri, rl) = _truncate_answers(seqs, max_len)
        return {"chosen_ids": ci, "chosen_labels": cl, "rejected_ids": ri, "rejected_labels": rl,
                "length": max(len(ci), len(ri)), "truncated": max(len(x) for x, _ in seqs) > max_len}
    msgs = rec["messages"]
    flags = [False] * (sum(m["role"] == "assistant" for m in msgs) - 1) + [True]
    seq = _ids_labels(tok, msgs, tools, flags)
    ((ids, labels),) = _truncate_answers([seq], max_len)
    return {"input_ids": ids, "labels": labels, "kto_label": int(rec["label"]), "length": len(ids),
            "truncated": len(seq[0]) > max_len}


def _truncate_answers(seqs: list[tuple[list[int], list[int]]], max_len: int) -> list[tuple[list[int], list[int]]]:
    """Sequences sharing one prompt (a pair's chosen and rejected) cut to max_len as LLaMA-Factory cuts them:
    the prompt keeps its end (the question) and at least max_len / 2 tokens when the answers are long, the answers
    keep their beginning. The same prompt tokens are dropped from every sequence, so they still share it."""
    if max(len(ids) for ids, _ in seqs) <= max_len:
        return seqs
    P = min(next((i for i, t in enumerate(lab) if t != -100), len(lab)) for _, lab in seqs)
    answer = max(len(ids) for ids, _ in seqs) - P
    keep_p = min(P, max(max_len - answer, max_len // 2))
    cut = P - keep_p
    return [(ids[cut:][:max_len], lab[cut:][:max_len]) for ids, lab in seqs]


def tokenize_conversation(tok, record: dict, max_len: int) -> dict | None:
    """input_ids + labels (-100 outside assistant turns), truncated to max_len; None if nothing to learn."""
    return tokenize_record(tok, record, max_len)


def load_examples(tok, sources: list[tuple[str, int]], max_len: int, rank: int = 0, world: int = 1,
                  train_on_prompt: bool = False, mask_history: bool = False,
                  ) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """This rank's 1/world of every source (rows rank::world), tokenized, with per-source counts:
    rows = kept + skipped (no trained token within max_len); truncated = kept rows cut to max_len."""
    examples, stats = [], {}
    for path, cap in sources:
        st = stats.setdefault(Path(path).stem, {"rows": 0, "kept": 0, "truncated": 0, "skipped": 0})
        for rec in read_jsonl(path, cap or None)[rank::world]:
            st["rows"] += 1
            ex = tokenize_record(tok, rec, max_len, train_on_prompt, mask_history)
            if ex is None:
                st["skipped"] += 1
                continue
            st["kept"] += 1
            st["truncated"] += bool(ex.pop("truncated", False))
            ex["index"] = len(examples)
            examples.append(ex)
    return examples, stats


def check_sources_fit(tok, sources: list[tuple[str, int]], max_len: int, sample: int = 32) -> None:
    """Fail before any worker starts when max_len leaves nothing to train in a source's first rows
    (e.g. tool-call records whose system prompt alone is ~430 tokens, with max_len 384)."""
    for path, cap in sources:
        recs = read_jsonl(path, min(cap, sample) if cap else sample)
        if not recs:
            continue
        full = [tokenize_record(tok, r, 1 << 30) for r in recs]
        if not any(full):
            raise ValueError(f"{path}: no assistant tokens in its first {len(recs)} conversations even "
                             "untruncated; the records need assistant turns (role 'assistant' with content or "
                             "tool_calls)")
        if all(tokenize_record(tok, r, max_len) is None for r in recs):
            need = min(e["length"] if kind_of(r) != "sft" else e["length"] - _tail(e) for r, e in zip(recs, full)
                       if e)
            raise ValueError(f"finetune.max_len={max_len} cuts every sample of {path} (its first "
                             f"{len(recs)} need {need}+ tokens): set --set finetune.max_len="
                             f"{1 << (need - 1).bit_length()} or shorten the records")


def _tail(ex: dict) -> int:
    """Tokens after the first trained one (an SFT row is usable once max_len reaches its first answer token)."""
    first = next(i for i, t in enumerate(ex["labels"]) if t != -100 and i > 0)
    return ex["length"] - first - 1


# ---------------------------------------------------------------------------------------------------------------
# batches


def collate(examples: list[dict], pad_id: int, ids_key: str = "input_ids",
            labels_key: str = "labels") -> dict[str, torch.Tensor]:
    T = max(len(e[ids_key]) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), -100, dtype=torch.long)
    for i, e in enumerate(examples):  # right padding: causal attention never looks at later pad tokens
        ids[i, : len(e[ids_key])] = torch.tensor(e[ids_key])
        labels[i, : len(e[labels_key])] = torch.tensor(e[labels_key])
    n = sum(len(e[ids_key]) for e in examples)
    return {"input_ids": ids, "labels": labels, "num_tokens": torch.tensor(n)}


def collate_packed(rows: list[list[dict]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of several samples each: ids/labels side by side, positions restarting per sample, and a mask
    letting a token attend only to earlier tokens of its own sample (B, 1, T, T). The first token of each
    sample is never a target (it would be predicted from the previous sample)."""
    T = max(sum(len(e["input_ids"]) for e in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    positions = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)  # padding is its own segment
    for b, row in enumerate(rows):
        s = 0
        for k, e in enumerate(row):
            n = len(e["input_ids"])
            ids[b, s:s + n] = torch.tensor(e["input_ids"])
            labels[b, s:s + n] = torch.tensor(e["labels"])
            labels[b, s] = -100
            positions[b, s:s + n] = torch.arange(n)
            seg[b, s:s + n] = k
            s += n
        positions[b, s:] = torch.arange(T - s)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal  # (B, T, T)
    n = sum(len(e["input_ids"]) for row in rows for e in row)
    return {"input_ids": ids, "labels": labels, "positions": positions, "attn_mask": mask[:, None],
            "num_tokens": torch.tensor(n)}


def pack(examples: list[dict], max_len: int) -> list[list[dict]]:
    """First-fit decreasing: samples into rows of at most max_len tokens (LLaMA-Factory's `packing`, with
    per-sample masks: `neat_packing`)."""
    rows: list[list[dict]] = []
    room: list[int] = []
    for e in sorted(examples, key=lambda e: -len(e["input_ids"])):
        n = len(e["input_ids"])
        j = next((i for i, r in enumerate(room) if r >= n), None)
        if j is None:
            rows.append([e])
            room.append(max_len - n)
        else:
            rows[j].append(e)
            room[j] -= n
    return rows


def collate_kind(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of any kind: preference pairs as 2B rows (chosen first, then rejected); precomputed reference
    log-probabilities ride along as `ref_logps`."""
    if "chosen_ids" in examples[0]:
        c = collate(examples, pad_id, "chosen_ids", "chosen_labels")
        r = collate(examples, pad_id, "rejected_ids", "rejected_labels")
        T = max(c["input_ids"].shape[1], r["input_ids"].shape[1])
        pad = lambda t, v: torch.nn.functional.pad(t, (0, T - t.shape[1]), value=v)  # noqa: E731
        batch = {"input_ids": torch.cat([pad(c["input_ids"], pad_id), pad(r["input_ids"], pad_id)]),
                 "labels": torch.cat([pad(c["labels"], -100), pad(r["labels"], -100)]),
                 "num_tokens": c["num_tokens"] + r["num_tokens"]}
        if "ref_logps" in examples[0]:
            batch["ref_logps"] = torch.tensor([e["ref_logps"][0] for e in examples]
                                              + [e["ref_logps"][1] for e in examples], dtype=torch.float64)
        return batch
    batch = collate(examples, pad_id)
    if "kto_label" in examples[0]:
        batch["kto_label"] = torch.tensor([e["kto_label"] for e in examples])
        if "ref_logps" in examples[0]:
            batch["ref_logps"] = torch.tensor([e["ref_logps"] for e in examples], dtype=torch.float64)
    return batch


def batch_order(examples: list[dict], batch_size: int, rng: random.Random, group_by_length: int) -> list[list[int]]:
    """One epoch of batches (indices). Length-grouped (HF `group_by_length`, LLaMA-Factory's default): each
    window of `group_by_length` batches of shuffled examples is sorted by length and cut into batches whose order
    is shuffled again, so a 160-token tool call is rarely padded to a 380-token conversation. 1 disables it."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * max(1, group_by_length)
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda j: examples[j]["length"])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    batches = [b for b in batches if len(b) == batch_size] or batches[:1]  # full batches only
    rng.shuffle(batches)
    return batches


def sft_batches(examples: list[dict], batch_size: int, pad_id: int, seed: int, group_by_length: int = 16,
                packing: int = 0, grad_accum: int = 1) -> Iterator[list[dict]]:
    """Endless steps of `grad_accum` micro-batches; each epoch reshuffles (seeded: every run, and a resumed one,
    sees the same batches). With `packing` = max_len, SFT samples are packed into rows of that length first and
    a batch is `batch_size` packed rows."""
    if not examples:
        raise RuntimeError("no fine-tuning examples for this worker: check finetune datasets and max_len")
    rng = random.Random(seed)
    if packing:
        rows = pack(examples, packing)
        units = [{"rows": r, "length": sum(len(e["input_ids"]) for e in r)} for r in rows]
        make = lambda idx: collate_packed([units[j]["rows"] for j in idx], pad_id)  # noqa: E731
    else:
        units = examples
        make = lambda idx: collate_kind([examples[j] for j in idx], pad_id)  # noqa: E731
    step: list[dict] = []
    while True:
        for b in batch_order(units, min(batch_size, len(units)), rng, group_by_length):
            step.append(make(b))
            if len(step) == grad_accum:
                yield step
                step = []
