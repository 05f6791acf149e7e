"""The data stage on Ray Data: files -> documents -> clean/filter -> dedup -> tokenizer -> packed parquet.

    from_items(file tasks) --flat_map(read)--> rows (docs + quarantine) --map_batches(clean)--> kept/dropped
      --(exact dedup, global)--> train tokenizer on a sample of kept TRAIN text (Ray task)
      --map_batches(tokenize)--> ids + EOS --map_batches(pack)--> input_ids [seq_len] --write_parquet

Outputs under out_dir: tokenizer/, train/*.parquet, val/*.parquet, quarantine.jsonl, dropped_sample.jsonl,
synthetic/arith_{train,heldout}.jsonl, sft/<name>.jsonl (sft/toolmix.jsonl and synthetic/tools_heldout.jsonl with
`tool_mix`), docs/docs.parquet (with `docs_sources`), stats.json.
Every input record is accounted for: read == kept + sum(dropped) + sum(quarantined) (asserted).
The caller connects to Ray (cluster.connect()); this module never calls ray.init.
"""
from __future__ import annotations

import functools
import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.expressions import col

from actors.common import formats as sft
from actors.data import extract, synthetic, toolmix
from actors.data import transforms as T
from actors.data.config import DataConfig
from actors.model.hf import copy_tokenizer
from actors.model.tokenizer import document_end_id, train_tokenizer

ORDER_STRIDE = 1 << 32             # order = file index * stride + record index within the file
DROPPED_SAMPLE_PER_RULE = 20
META_COLUMNS = ["source_name", "source", "doc_id", "status", "reason_kind", "reason", "raw_preview", "hash",
                "split", "n_chars", "order"]


# ------------------------------------------------------------------------------------------ Ray Data UDFs
# Module-level functions (pickled by reference); each is a thin wrapper around Ray-free logic.

def row_permutation(n_rows: int, seed: int) -> np.ndarray:
    """Row i of the written shards is packed row `row_permutation(n, seed)[i]`."""
    return np.random.default_rng(seed).permutation(n_rows)


def _write_shuffled_shards(packed, sdir: Path, rows_per_shard: int, seed: int) -> None:
    """Write packed rows in one seeded global permutation, `rows_per_shard` rows a file.

    Consecutive packed rows come from neighbouring documents of one source; a trainer that streams shards
    would otherwise see few sources at a time and its loss would track the source, not the mix. At this
    scale (MBs of tokens) the permutation runs on the driver; a web-scale corpus would shuffle per shard.
    """
    table = pa.concat_tables([ray.get(ref) for ref in packed.to_arrow_refs()])
    table = table.take(row_permutation(table.num_rows, seed))
    sdir.mkdir(parents=True, exist_ok=True)
    for i in range(0, table.num_rows, rows_per_shard):
        pq.write_table(table.slice(i, rows_per_shard), sdir / f"part-{i // rows_per_shard:05d}.parquet")


def _read_file(task: dict) -> list[dict]:
    rows = []
    for i, rec in enumerate(extract.read_task(task)):
        rec["order"] = task["task_idx"] * ORDER_STRIDE + i
        rows.append(rec)
    return rows


def _clean_batch(batch: pa.Table, filters, val_fraction: float, seed: int) -> pa.Table:
    return pa.Table.from_pylist(T.clean_rows(batch.to_pylist(), filters, val_fraction, seed))


def _mark_duplicates(batch: pa.Table, dups: frozenset) -> pa.Table:
    if not dups:
        return batch
    rows = batch.to_pylist()
    for r in rows:
        if r["status"] == "kept" and r["doc_id"] in dups:
            r.update(status="dropped", reason_kind=T.DUPLICATE,
                     reason=f"{T.DUPLICATE}: same normalized text as an earlier document", raw_preview=r["text"][:160])
    return pa.Table.from_pylist(rows, schema=batch.schema)


@functools.lru_cache(maxsize=2)
def _cached_tokenizer(tok_dir: str):
    return T.load_fast_tokenizer(tok_dir)        # once per worker process, not once per batch


def _tokenize_batch(batch: pa.Table, tok_dir: str) -> pa.Table:
    tok = _cached_tokenizer(tok_dir)
    ids = T.tokenize_texts(tok, batch.column("text").to_pylist(), document_end_id(tok))
    return pa.table({"ids": pa.array(ids, type=pa.list_(pa.int32())),
                     "n_tokens": pa.array([len(x) for x in ids], type=pa.int64())})


def _pack_batch(batch: pa.Table, seq_len: int) -> pa.Table:
    flat = pc.list_flatten(batch.column("ids").combine_chunks()).to_numpy(zero_copy_only=False)
    rows, _tail = T.pack_flat(flat, seq_len)   # tail = n_tokens - rows*seq_len, reconciled by the driver
    offsets = pa.array(np.arange(0, rows.size + 1, seq_len, dtype=np.int32))
    return pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(rows.reshape(-1)))})


# ------------------------------------------------------------------------------------------ the stage

def _progress(t0: float, msg: str) -> None:
    print(f"[data +{time.time() - t0:5.1f}s] {msg}", file=sys.stderr, flush=True)


def _token_counts(ds, vocab: int, seq_len: int, skip_first: bool) -> np.ndarray:
    """Token histogram [vocab] of packed rows; skip_first drops position 0 of each row (never predicted)."""
    counts = np.zeros(vocab, dtype=np.int64)
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=4096):
        flat = pc.list_flatten(b.column("input_ids").combine_chunks()).to_numpy(zero_copy_only=False)
        rows = flat.reshape(-1, seq_len)
        counts += np.bincount((rows[:, 1:] if skip_first else rows).reshape(-1), minlength=vocab)[:vocab]
    return counts


def run_data_stage(cfg: DataConfig, out_dir: str | Path, data_root: str | Path,
                   base_model_dir: str | Path | None = None) -> dict:
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir, train_dir, val_dir = out / "tokenizer", out / "train", out / "val"
    for d in (tok_dir, train_dir, val_dir, out / "synthetic", out / "sft", out / "docs"):
        shutil.rmtree(d, ignore_errors=True)     # a re-run must not mix old shards with new ones
    train_dir.mkdir()
    val_dir.mkdir()

    tasks = [t for s in cfg.sources for t in extract.expand_source(s, data_root)]
    for i, t in enumerate(tasks):
        t["task_idx"] = i
        t["timeout_s"] = cfg.extract_timeout_s
    _progress(t0, f"{len(tasks)} files from {len(cfg.sources)} sources")

    pool = ray.data.TaskPoolStrategy(size=cfg.num_workers)   # at most num_workers tasks per step
    ctx = ray.data.DataContext.get_current()
    old_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True   # deterministic shards: same input -> same parquet rows
    try:
        # 1. extract + normalize + rule filters + hash/split: one fused task per file
        cleaned = (ray.data.from_items(tasks, override_num_blocks=len(tasks))
                   .flat_map(_read_file, compute=pool)
                   .map_batches(_clean_batch, batch_format="pyarrow", batch_size=None, compute=pool,  # None: fuses
                                fn_kwargs={"filters": cfg.filters, "val_fraction": cfg.val_fraction,
                                           "seed": cfg.seed})
                   .materialize())
        meta = cleaned.select_columns(["status", "hash", "order", "doc_id"]).to_pandas()
        _progress(t0, f"read {len(meta)} records")

        # 2. exact dedup, global: the driver sees only (hash, order, doc_id), ~50 bytes a document
        dups: frozenset = frozenset()
        if cfg.dedup:
            k = meta[meta.status == "kept"]
            dups = frozenset(T.find_duplicates(k.hash.tolist(), k.order.tolist(), k.doc_id.tolist()))
        final = cleaned.map_batches(_mark_duplicates, batch_format="pyarrow", batch_size=4096,
                                    compute=pool,
                                    fn_kwargs={"dups": dups}).materialize()
        meta = final.select_columns(META_COLUMNS).to_pandas()

        # 3. accounting: every record is kept, dropped by one rule, or quarantined with a reason
        read = len(meta)
        kept_n = int((meta.status == "kept").sum())
        dropped = dict(sorted(Counter(meta.reason_kind[meta.status == "dropped"]).items()))
        quarantined = dict(sorted(Counter(meta.reason_kind[meta.status == "quarantined"]).items()))
        assert read == kept_n + sum(dropped.values()) + sum(quarantined.values()), "data accounting broken"
        by_source = {}
        for name, g in meta.groupby("source_name"):
            by_source[name] = {"read": len(g), "kept": int((g.status == "kept").sum()),
                               "dropped": int((g.status == "dropped").sum()),
                               "quarantined": int((g.status == "quarantined").sum()),
                               "kept_chars": int(g.n_chars[g.status == "kept"].sum())}
        _progress(t0, f"kept {kept_n}, dropped {dropped}, quarantined {quarantined}")

        quarantine_path = out / "quarantine.jsonl"
        with open(quarantine_path, "w") as f:
            for r in meta[meta.status == "quarantined"].itertuples():
                f.write(json.dumps({"stage": "pretrain", "source": r.source, "doc_id": r.doc_id,
                                    "reason_kind": r.reason_kind, "reason": r.reason,
                                    "raw_preview": r.raw_preview}, ensure_ascii=False) + "\n")
        with open(out / "dropped_sample.jsonl", "w") as f:   # to eyeball what each rule removes
            d = meta[meta.status == "dropped"]
            for rule, g in d.groupby("reason_kind"):
                for r in g.head(DROPPED_SAMPLE_PER_RULE).itertuples():
                    f.write(json.dumps({"rule": rule, "source": r.source, "doc_id": r.doc_id,
                                        "preview": r.raw_preview}, ensure_ascii=False) + "\n")

        # 4. tokenizer on a deterministic sample of kept TRAIN text (hash order = a seeded shuffle)
        kept = final.filter(expr=col("status") == "kept")
        docs_table = None
        if cfg.docs_sources:   # the documents retrieval indexes and quotes (both splits: all are citable)
            d = kept.select_columns(["doc_id", "source_name", "text"]).to_pandas()
            d = d[d.source_name.isin(cfg.docs_sources)].sort_values("doc_id")
            docs_table = {"doc_id": d.doc_id.tolist(), "source": d.source_name.tolist(), "text": d.text.tolist()}
            (out / "docs").mkdir(exist_ok=True)
            pq.write_table(pa.table(docs_table), out / "docs" / "docs.parquet")
            _progress(t0, f"docs: {len(d)} documents of {cfg.docs_sources}")
        train_docs = kept.filter(expr=col("split") == "train").select_columns(["text", "hash"]).to_pandas()
        if train_docs.empty:
            raise ValueError("data stage: no training document survived the filters; check data.sources and "
                             f"data.filters (dropped: {dropped}, quarantined: {quarantined})")
        sample, nbytes = [], 0
        for text in train_docs.sort_values("hash").text:
            if nbytes >= cfg.tokenizer_sample_bytes:
                break
            sample.append(text)
            nbytes += len(text.encode("utf-8"))
        del train_docs
        if cfg.tokenizer:  # a base model's own tokenizer (continued pretraining of that model)
            if base_model_dir is None:
                raise ValueError(f"data.tokenizer={cfg.tokenizer!r}: the driver must resolve it to a model folder "
                                 "(run_data_stage(..., base_model_dir=...))")
            tok_dir.mkdir(parents=True, exist_ok=True)
            copy_tokenizer(base_model_dir, tok_dir)
            sample, nbytes = [], 0
            vocab = T.load_fast_tokenizer(str(tok_dir)).get_vocab_size(with_added_tokens=True)
            _progress(t0, f"tokenizer of {cfg.tokenizer} ({base_model_dir}), vocab {vocab}")
        else:
            ray.get(ray.remote(num_cpus=1)(train_tokenizer).remote(
                sample, cfg.vocab_size, str(tok_dir), cfg.tokenizer_min_frequency, max(1024, cfg.seq_len)))
            vocab = T.load_fast_tokenizer(str(tok_dir)).get_vocab_size(with_added_tokens=True)
            _progress(t0, f"tokenizer trained on {len(sample)} docs / {nbytes / 1e6:.2f} MB, vocab {vocab}")

        # 5. tokenize + EOS, pack to seq_len rows, write parquet
        split_metrics = {}
        packed_ds = {}
        for split, sdir in (("train", train_dir), ("val", val_dir)):
            # documents in content-hash order (a fixed pseudo-random order) before packing: packed in source
            # order, a train row holds consecutive paragraphs of one play or book while a val row (a 2% sample)
            # holds unrelated documents, and train loss ran ~0.3 nats under val loss on unseen rows
            toks = (kept.filter(expr=col("split") == split).select_columns(["text", "hash"]).sort("hash")
                    .select_columns(["text"])
                    .map_batches(_tokenize_batch, batch_format="pyarrow", batch_size=512,
                                 compute=pool,
                                 fn_kwargs={"tok_dir": str(tok_dir)})
                    .materialize())
            n_docs = toks.count()
            # summed on the driver: Dataset.sum() is a hash aggregation, seconds of overhead on 2 cores
            n_tokens = int(toks.select_columns(["n_tokens"]).to_pandas().n_tokens.sum()) if n_docs else 0
            packed = toks.map_batches(_pack_batch, batch_format="pyarrow", batch_size=cfg.pack_batch_docs,
                                      compute=pool,
                                      fn_kwargs={"seq_len": cfg.seq_len}).materialize()
            n_rows = packed.count()
            if n_rows:
                _write_shuffled_shards(packed, sdir, cfg.rows_per_shard, cfg.seed)
            split_metrics[split] = {"docs": n_docs, "tokens": n_tokens, "sequences": n_rows,
                                    "tail": n_tokens - n_rows * cfg.seq_len}
            packed_ds[split] = packed
            _progress(t0, f"{split}: {n_docs} docs, {n_tokens} tokens -> {n_rows} rows of {cfg.seq_len}")

        # 6. the unigram baseline, on exactly the positions a next-token LM is scored on
        train_counts = _token_counts(packed_ds["train"], vocab, cfg.seq_len, skip_first=False)
        val_counts = _token_counts(packed_ds["val"], vocab, cfg.seq_len, skip_first=True)
        entropy = T.unigram_cross_entropy(train_counts, val_counts) if val_counts.sum() else None
    finally:
        ctx.execution_options.preserve_order = old_order

    # 7. synthetic tool-call task and SFT conversions (small: plain Python)
    sy = cfg.synthetic
    syn_train, syn_held = synthetic.generate(sy.n_train, sy.n_heldout, sy.seed, sy.min_digits, sy.max_digits)
    syn_train_path = synthetic.write_jsonl(syn_train, out / "synthetic" / "arith_train.jsonl")
    syn_held_path = synthetic.write_jsonl(syn_held, out / "synthetic" / "arith_heldout.jsonl")
    sft_paths, sft_counts, by_name = [], {}, {}
    with open(quarantine_path, "a") as qf:
        for s in cfg.sft_sources:
            path = Path(s.path) if Path(s.path).is_absolute() else Path(data_root) / s.path
            records, bad, counts = sft.convert_sft_file(path, s.name, s.format, s.max_rows)
            sft_paths.append(str(synthetic.write_jsonl(records, out / "sft" / f"{s.name}.jsonl")))
            for q in bad:
                qf.write(json.dumps(q, ensure_ascii=False) + "\n")
            sft_counts[s.name] = counts
            by_name[s.name] = records
    tools_held_path = None
    if cfg.tool_mix:
        tm = cfg.tool_mix
        counts = {k: getattr(tm, k) for k in toolmix.KINDS + ("api_calls",)}
        held_counts = {"python": tm.heldout_python, "retrieval": tm.heldout_retrieval}
        docs = [{"id": d, "text": t} for d, t in zip(docs_table["doc_id"], docs_table["text"])] if docs_table else []
        rows = toolmix.compose([r for n in tm.from_sources for r in by_name[n]], counts, tm.seed,
                               {r["expression"] for r in syn_held}, docs, held_counts)
        sft_paths.append(str(synthetic.write_jsonl(rows, out / "sft" / "toolmix.jsonl")))
        sft_counts["toolmix"] = {k: sum(r["kind"] == k for r in rows) for k in toolmix.KINDS}
        held = toolmix.heldout(held_counts, docs, tm.seed)
        tools_held_path = synthetic.write_jsonl(held, out / "synthetic" / "tools_heldout.jsonl")
    _progress(t0, f"synthetic {len(syn_train)}+{len(syn_held)}, sft {sft_counts}")

    metrics = {
        "read": read, "kept": kept_n, "dropped": dropped, "quarantined": quarantined,
        "train_docs": split_metrics["train"]["docs"], "val_docs": split_metrics["val"]["docs"],
        "train_tokens": split_metrics["train"]["tokens"], "val_tokens": split_metrics["val"]["tokens"],
        "train_sequences": split_metrics["train"]["sequences"], "val_sequences": split_metrics["val"]["sequences"],
        "tokens_dropped_tail": split_metrics["train"]["tail"] + split_metrics["val"]["tail"],
        "unigram_entropy_nats": entropy,
        "vocab_size": vocab, "seq_len": cfg.seq_len,
        "tokenizer_sample_docs": len(sample), "tokenizer_sample_bytes": nbytes,
        "by_source": by_source, "sft": sft_counts,
        "synthetic": {"train": len(syn_train), "heldout": len(syn_held)},
        "seconds": round(time.time() - t0, 2),
    }
    outputs = {
        "tokenizer_dir": str(tok_dir), "train_dir": str(train_dir), "val_dir": str(val_dir),
        "quarantine": str(quarantine_path), "synthetic_train": str(syn_train_path),
        "synthetic_heldout": str(syn_held_path), "sft": sft_paths, "stats": str(out / "stats.json"),
        **({"docs": str(out / "docs")} if docs_table else {}),
        **({"tools_heldout": str(tools_held_path)} if tools_held_path else {}),
    }
    (out / "stats.json").write_text(json.dumps({"metrics": metrics, "outputs": outputs, "config": asdict(cfg)},
                                               indent=2, ensure_ascii=False))
    from actors.data.card import write_pack_card

    write_pack_card(out, metrics, outputs)
    outputs["card"] = str(out / "card.md")
    _progress(t0, f"done: {metrics['train_tokens']} train / {metrics['val_tokens']} val tokens, "
                  f"unigram CE {entropy if entropy is None else round(entropy, 4)} nats")
    return {"outputs": outputs, "metrics": metrics}
