"""What only a GPU proves, in one short run: the day an NVIDIA GPU is lent for ~10 minutes, run

    .venv/bin/python bench/gpu_check.py [--require-gpu] [--out-dir DIR]     # on the GPU machine
    .venv/bin/python bench/gpu_check.py --dry-run                           # anywhere: tiny sizes on CPU (<2 min)

Sections, each in a process of its own (a CUDA fault, a hang or an OOM in one cannot poison the next), each timed,
with a wall-clock limit; a failed section records its error and the run goes on; exit code 1 if any failed:

1. kernels   - the Triton kernels in kernels/ compiled for real on CUDA against their torch `*_reference`: RMSNorm
               (forward + d/dx, d/dw), fused linear + cross-entropy (summed and per-row loss + d/dhidden, d/dweight,
               and the per-row softmax kernel alone), paged decode attention (scattered blocks, GQA, a head dim that
               is not a power of 2), int4 dequantization (+ the int4 linear's forward and d/dx); odd shapes, fp32 and
               bf16. Error = max |triton - reference| / max |reference| (and the max abs), against a tolerance per
               dtype. In the dry run the same kernels run under TRITON_INTERPRET=1 (set in the child's environment
               before triton is imported) and the dispatchers are pointed at the Triton path.
2. engine    - `actors.engine.LLMEngine` greedy vs `transformers` `generate(do_sample=False)` on the same weights:
               SmolLM2-135M-Instruct (registry import, no download) on CUDA; fp32 must match token for token (each
               prompt alone; the prompts batched together are reported too), bf16 agreement is reported as the share
               of tokens before the first difference. Dry run: the `debug` shape with random weights and a small BPE
               tokenizer trained here, saved with `save_hf` and loaded by transformers.
3. pretrain  - the project's Trainer on the `1b` shape (TinyLlama) in the resolved dtype (bf16 on a GPU): a few steps
               of batch x seq random tokens; tokens/s and MFU as `Trainer.train_step` reports them (peak FLOP/s from
               `actors.train.trainer.device_peak_flops`), peak memory; an OOM halves the batch and tries again.
               Dry run: the debug shape, 2 steps.
4. serve     - `bench/serve.py` as a subprocess (Ray Serve, OpenAI endpoint under load) with GPU-sized arguments;
               its last JSON line. bench/serve.py has no GPU option, so the child gives `num_gpus=1` to
               `start_server` (the engine replica then loads the model on cuda) unless serve.py grows `--num-gpus`.
               Dry run: a handful of tiny requests against the debug model.

The full report (every kernel case, every prompt) goes to DIR/gpu_check.json with one log per section; the last
line printed is a compact JSON summary: `ok`, `mode`, `dtype`, `cpu_capability`, `device`, versions and per section
`ok`, `wall_s`, `error` and its headline numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script (`python bench/gpu_check.py`): the repo root is not on the path
    sys.path.insert(0, str(REPO))

SECTIONS = ("kernels", "engine", "pretrain", "serve")
MARK = "GPU_CHECK_SECTION "
# seconds per section (GPU run, dry run): a safety net; the GPU figures keep the whole run inside ~10 minutes, the
# dry run takes ~20-50 s a section on 2 busy cores
TIMEOUTS = {"kernels": (180, 240), "engine": (240, 240), "pretrain": (240, 240), "serve": (300, 300)}


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes on CPU (the default when torch sees no CUDA device)")
    ap.add_argument("--require-gpu", action="store_true",
                    help="fail at once (exit 2) when torch sees no CUDA device instead of falling back to a dry run")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--dtype", default="auto", help="compute dtype of pretrain and serve (auto: cluster.hardware)")
    ap.add_argument("--out-dir", default=None, help="report + logs (default runs/bench/gpu_check[-dry])")
    ap.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every section's time limit")
    ap.add_argument("--engine-model", default="smollm2-135m-instruct", help="registry name, .gguf or HF folder")
    ap.add_argument("--engine-max-tokens", type=int, default=48)
    ap.add_argument("--pretrain-model", default="1b", help="actors.model.config shape")
    ap.add_argument("--pretrain-batch", type=int, default=8)
    ap.add_argument("--pretrain-seq", type=int, default=2048)
    ap.add_argument("--pretrain-steps", type=int, default=6, help="timed steps (after --pretrain-warmup)")
    ap.add_argument("--pretrain-warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile each layer in the pretrain section")
    ap.add_argument("--serve-model", default="smollm2-135m-instruct")
    ap.add_argument("--serve-num-prompts", type=int, default=128)
    ap.add_argument("--serve-max-concurrency", type=int, default=64)
    ap.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    ap.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)  # a child's mode, decided by the parent
    a, rest = ap.parse_known_args(argv)
    if rest and not a.serve_child:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    a.serve_argv = rest
    return a


# ---------------------------------------------------------------------------------------------------------------
# helpers shared by the sections


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "triton", "transformers", "ray"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _err(got, ref) -> tuple[float, float]:
    """(max abs error, max abs error / max |reference|) in float64."""
    g, r = got.detach().double(), ref.detach().double()
    diff = float((g - r).abs().max()) if g.numel() else 0.0
    scale = float(r.abs().max()) if r.numel() else 0.0
    return diff, diff / scale if scale > 0 else diff


class Cases:
    """Comparisons of one kernel: each with its shape, dtype, errors and pass/fail."""

    def __init__(self):
        self.rows: list[dict] = []

    def check(self, kernel: str, what: str, got, ref, tol: float, **info) -> None:
        if got.shape != ref.shape:
            return self.fail(kernel, what, f"shape {list(got.shape)} != reference {list(ref.shape)}", **info)
        abs_err, rel_err = _err(got, ref)
        ok = bool(math.isfinite(rel_err) and rel_err <= tol)
        self.rows.append({"kernel": kernel, "check": what, **info, "max_abs": _finite(abs_err),
                          "max_rel": _finite(rel_err), "tol": tol, "ok": ok})

    def fail(self, kernel: str, what: str, error: str, **info) -> None:
        self.rows.append({"kernel": kernel, "check": what, **info, "ok": False, "error": error})

    def summary(self) -> dict:
        out: dict[str, dict] = {}
        for r in self.rows:
            s = out.setdefault(r["kernel"], {"cases": 0, "failed": 0, "worst_rel": 0.0, "worst_abs": 0.0})
            s["cases"] += 1
            s["failed"] += not r["ok"]
            for k in ("rel", "abs"):
                v = r.get(f"max_{k}")
                if isinstance(v, float):
                    s[f"worst_{k}"] = max(s[f"worst_{k}"], v)
        return out


TOL = {"float32": 1e-4, "bfloat16": 3e-2}  # max error relative to max |reference|
TOL_FWD = {"float32": 1e-5, "bfloat16": 2e-2}


def _finite(x):
    """JSON has no NaN/inf: a non-finite number is written as its name."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _dname(dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------------------------
# 1. kernels


def section_kernels(a) -> dict:
    import torch

    import kernels.fused_linear_ce as fl
    import kernels.int4 as i4
    import kernels.paged_attention as pa
    import kernels.rmsnorm as rn

    if not rn.HAVE_TRITON:
        raise RuntimeError("triton is not importable here")
    dev = torch.device("cuda" if a.gpu else "cpu")
    # compiled (JITFunction) on the GPU, InterpretedFunction under TRITON_INTERPRET=1
    kind = type(rn._rms_norm_fwd).__name__
    if a.gpu and "Interpret" in kind:
        raise RuntimeError(f"the kernels are {kind}s: TRITON_INTERPRET is set; the GPU check needs compiled ones")
    cases = Cases()
    dtypes = (torch.float32, torch.bfloat16)

    def guarded(kernel, what, fn, **info):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one broken case is recorded, the others still run
            cases.fail(kernel, what, f"{type(e).__name__}: {e}"[:500], **info)

    # the dispatchers pick Triton only for CUDA tensors; in the dry run point them at the kernels themselves
    patches = [] if a.gpu else [(fl, "ce_rows", fl.ce_rows_triton), (i4, "dequantize_int4", i4.dequantize_int4_triton)]
    saved = [(m, n, getattr(m, n)) for m, n, _ in patches]
    for m, n, f in patches:
        setattr(m, n, f)
    try:
        # RMSNorm: forward, d/dx, d/dw
        shapes = [(3, 7, 37), (2, 1, 1000), (1, 13)] + ([(5, 2048), (1031, 4099), (64, 5632)] if a.gpu else [])
        for shape in shapes:
            for dt in dtypes:
                def rms(shape=shape, dt=dt):
                    g = torch.Generator(device=dev).manual_seed(len(shape) * 1000 + shape[-1])
                    x = torch.randn(*shape, device=dev, generator=g).to(dt).requires_grad_()
                    w = (1 + 0.1 * torch.randn(shape[-1], device=dev, generator=g)).to(dt).requires_grad_()
                    dy = torch.randn(*shape, device=dev, generator=g).to(dt)
                    y = rn.rms_norm_triton(x, w, 1e-5)
                    y.backward(dy)
                    gx, gw = x.grad, w.grad
                    x.grad = w.grad = None
                    yr = rn.rms_norm_reference(x, w, 1e-5)
                    yr.backward(dy)
                    info = {"shape": list(shape), "dtype": _dname(dt)}
                    cases.check("rmsnorm", "forward", y, yr, TOL_FWD[_dname(dt)], **info)
                    cases.check("rmsnorm", "grad_x", gx, x.grad, TOL[_dname(dt)], **info)
                    cases.check("rmsnorm", "grad_w", gw, w.grad, TOL[_dname(dt)], **info)
                guarded("rmsnorm", "forward+grads", rms, shape=list(shape), dtype=_dname(dt))

        # fused linear + cross-entropy: (rows, hidden, vocab, chunk); chunks that do not divide the rows
        shapes = [(37, 24, 301, 8), (19, 16, 1000, 7)]
        if a.gpu:
            shapes += [(1031, 576, 49152, 256), (2053, 2048, 32000, fl.CHUNK_ROWS)]
        for n, d, V, chunk in shapes:
            for dt in dtypes:
                def fused(n=n, d=d, V=V, chunk=chunk, dt=dt):
                    g = torch.Generator(device=dev).manual_seed(n + V)
                    h = torch.randn(n, d, device=dev, generator=g).to(dt).requires_grad_()
                    w = (torch.randn(V, d, device=dev, generator=g) * d ** -0.5).requires_grad_()
                    t = torch.randint(0, V, (n,), device=dev, generator=g)
                    t[[0, n // 2]] = -100
                    info = {"shape": [n, d, V], "chunk": chunk, "dtype": _dname(dt)}
                    tol = TOL[_dname(dt)]
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        base = torch.cuda.memory_allocated()
                    loss = fl.linear_cross_entropy(h, w, t, chunk=chunk)
                    (loss * 0.5).backward()
                    if dev.type == "cuda":
                        info["fused_peak_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
                    gh, gw = h.grad, w.grad
                    h.grad = w.grad = None
                    if dev.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    ref = fl.linear_cross_entropy_reference(h, w, t)
                    (ref * 0.5).backward()
                    if dev.type == "cuda":
                        info["reference_peak_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
                    cases.check("fused_linear_ce", "loss", loss.reshape(1), ref.reshape(1), tol, **info)
                    cases.check("fused_linear_ce", "grad_hidden", gh, h.grad, tol, **info)
                    cases.check("fused_linear_ce", "grad_weight", gw, w.grad, tol, **info)
                    h.grad = w.grad = None
                    # per-row losses (preference methods): a non-uniform upstream gradient, recomputed in backward
                    up = torch.randn(n, device=dev, generator=g)
                    out = fl.linear_token_losses(h, w, t, chunk=chunk)
                    (out * up).sum().backward()
                    gh, gw = h.grad, w.grad
                    h.grad = w.grad = None
                    ref = fl.linear_token_losses_reference(h, w, t)
                    (ref * up).sum().backward()
                    cases.check("fused_linear_ce", "token_losses", out, ref, tol, **info)
                    cases.check("fused_linear_ce", "token_grad_hidden", gh, h.grad, tol, **info)
                    cases.check("fused_linear_ce", "token_grad_weight", gw, w.grad, tol, **info)
                    # the per-row softmax/loss/gradient kernel alone
                    logits = (torch.randn(n, V, device=dev, generator=g) * 3).to(dt)
                    la, lb = logits.clone(), logits.clone()
                    cases.check("fused_linear_ce", "ce_rows_loss", fl.ce_rows_triton(lb, t, -100),
                                fl.ce_rows_reference(la, t, -100), 1e-4, **info)
                    cases.check("fused_linear_ce", "ce_rows_grad", lb, la, TOL[_dname(dt)], **info)
                guarded("fused_linear_ce", "loss+grads", fused, shape=[n, d, V], dtype=_dname(dt))

        # paged decode attention: (sequence lengths, heads, kv heads, head dim, block size)
        shapes = [([1, 17, 5], 6, 2, 16, 4), ([33, 8], 9, 3, 24, 8)]
        if a.gpu:
            shapes += [([1, 15, 16, 17, 100, 513, 2047], 9, 3, 64, 16), ([7, 300, 1025], 32, 4, 64, 16),
                       ([31, 64, 999], 10, 2, 80, 32)]
        for lens, nh, nkv, hd, bs in shapes:
            for dt in dtypes:
                def paged(lens=lens, nh=nh, nkv=nkv, hd=hd, bs=bs, dt=dt):
                    g = torch.Generator(device=dev).manual_seed(sum(lens) + hd)
                    num_blocks = 1 + sum(-(-n // bs) for n in lens) + 3
                    k_pool = torch.zeros(nkv, num_blocks * bs, hd, device=dev, dtype=dt)
                    v_pool = torch.zeros_like(k_pool)
                    perm = torch.randperm(num_blocks - 1, generator=torch.Generator().manual_seed(0)) + 1
                    free = perm.tolist()  # scattered blocks: the table, not adjacency, orders a sequence
                    tables = []
                    for n in lens:
                        blocks = [free.pop() for _ in range(-(-n // bs))]
                        slots = torch.tensor([blocks[p // bs] * bs + p % bs for p in range(n)], device=dev)
                        k = torch.randn(n, nkv, hd, device=dev, generator=g)
                        v = torch.randn(n, nkv, hd, device=dev, generator=g)
                        pa.write_kv(k_pool, v_pool, k, v, slots)
                        tables.append(blocks)
                    width = max(len(t) for t in tables)
                    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=dev)
                    seq_lens = torch.tensor(lens, device=dev)
                    q = torch.randn(len(lens), nh, hd, device=dev, generator=g).to(dt)
                    scale = hd ** -0.5
                    tri = pa.paged_decode_attention_triton(q, k_pool, v_pool, pa.DecodeMeta(bt, seq_lens, bs), scale)
                    ref = pa.paged_decode_attention_reference(q, k_pool, v_pool, pa.DecodeMeta(bt, seq_lens, bs),
                                                              scale)
                    cases.check("paged_attention", "decode", tri, ref, TOL[_dname(dt)] if dt != torch.float32
                                else TOL_FWD["float32"] * 2, lens=lens, heads=[nh, nkv], head_dim=hd, block_size=bs,
                                dtype=_dname(dt))
                guarded("paged_attention", "decode", paged, lens=lens, dtype=_dname(dt))

        # int4 dequantization: (rows, cols, group)
        shapes = [(7, 96, 32), (1, 10, 2)] + ([(33, 128, 64), (4099, 5632, 64), (2049, 576, 32)] if a.gpu else [])
        for out, n, group in shapes:
            def int4(out=out, n=n, group=group):
                g = torch.Generator(device=dev).manual_seed(out * n)
                w = torch.randn(out, n, device=dev, generator=g)
                q, s, m = i4.quantize_int4(w, group)
                for dt, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1.6e-2)):  # bf16: two units of its last place
                    cases.check("int4", "dequant", i4.dequantize_int4_triton(q, s, m, group, dt),
                                i4.dequantize_int4_reference(q, s, m, group, dt), tol, shape=[out, n], group=group,
                                dtype=_dname(dt))
                x = torch.randn(5, 3, n, device=dev, generator=g, requires_grad=True)
                y = i4.int4_linear(x, q, s, m, group)
                dy = torch.randn_like(y)
                y.backward(dy)
                gx = x.grad
                x.grad = None
                yr = i4.int4_linear_reference(x, q, s, m, group)
                yr.backward(dy)
                cases.check("int4", "linear", y, yr, 1e-5, shape=[out, n], group=group, dtype="float32")
                cases.check("int4", "linear_grad_x", gx, x.grad, 1e-5, shape=[out, n], group=group, dtype="float32")
            guarded("int4", "dequant+linear", int4, shape=[out, n], group=group)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    finally:
        for m, n, f in saved:
            setattr(m, n, f)
    summary = cases.summary()
    failed = [dict(r) for r in cases.rows if not r["ok"]]
    return {"ok": not failed and bool(cases.rows), "triton_kind": kind, "device": str(dev), "kernels": summary,
            "failures": failed[:8], "detail": {"cases": cases.rows}}


# ---------------------------------------------------------------------------------------------------------------
# 2. engine greedy vs HF generate


_SYLLABLES = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]


def _debug_model(workdir: Path) -> Path:
    """The `debug` shape with random weights (seed 0) and a small byte-level BPE tokenizer trained on seeded
    pseudo-words (no data files), saved as an HF folder: what transformers, the engine and bench/serve.py load.
    Built once per run directory; vocabulary > 1000 because bench/serve.py draws prompt ids from [1000, vocab)."""
    out = workdir / "debug-model"
    if (out / "model.safetensors").exists():
        return out
    import random

    import torch

    from actors.model import Transformer, get_config, save_hf
    from actors.model.tokenizer import EOS, load_tokenizer, train_tokenizer

    rng = random.Random(0)
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
    docs = [" ".join(rng.choice(words) for _ in range(60)) + "." for _ in range(400)]
    tok_dir = train_tokenizer(docs, 1536, workdir / "debug-tokenizer")
    tok = load_tokenizer(tok_dir)
    eos = tok.convert_tokens_to_ids(EOS)
    torch.manual_seed(0)
    cfg = get_config("debug", vocab_size=len(tok), eos_token_id=eos, pad_token_id=eos)
    tmp = out.with_name(out.name + ".tmp")
    save_hf(Transformer(cfg).eval(), tmp, tokenizer_dir=tok_dir)
    tmp.rename(out)
    return out


def _common_prefix(x: list[int], y: list[int]) -> int:
    n = 0
    for p, q in zip(x, y):
        if p != q:
            break
        n += 1
    return n


def section_engine(a) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from actors.engine import EngineConfig, LLMEngine, SamplingParams
    from actors.model.hf import load_hf
    from actors.model.tokenizer import load_tokenizer, stop_token_ids

    dev = "cuda" if a.gpu else "cpu"
    if a.gpu:
        import cluster
        from actors.model.registry import resolve_model

        model_dir = resolve_model(a.engine_model, cluster.model_cache(), dtype="float32")
        max_tokens = a.engine_max_tokens
        questions = ["What is the capital of France?", "Write a haiku about a graphics card.",
                     "Explain in one sentence what a KV cache is.", "List three prime numbers greater than 10.",
                     "Translate 'good morning' into Spanish and German."]
    else:
        model_dir = _debug_model(Path(a.workdir))
        max_tokens = min(a.engine_max_tokens, 16)
        questions = ["ba ke lo mi", "What is twelve plus thirty?"]
    tok = load_tokenizer(model_dir)
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=False), add_special_tokens=False)["input_ids"] for q in questions]
    prompts.append(tok("The quick brown fox jumps over the lazy dog. Once upon a time",
                       add_special_tokens=False)["input_ids"])
    stops = stop_token_ids(tok)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, stop_token_ids=stops)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]

    def run(dtype) -> dict:
        t0 = time.perf_counter()
        model = load_hf(model_dir, dtype=dtype, device=dev)
        engine = LLMEngine(model, tok, EngineConfig(kv_cache_memory="512MiB"))
        alone = [engine.generate(p, params).token_ids for p in prompts]
        batched = [o.token_ids for o in engine.generate_many(prompts, params)]
        del engine, model
        hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(dev).eval()
        ref = []
        with torch.inference_mode():
            for p in prompts:
                out = hf.generate(torch.tensor([p], device=dev), attention_mask=torch.ones(1, len(p), device=dev,
                                                                                            dtype=torch.long),
                                  do_sample=False, max_new_tokens=max_tokens, eos_token_id=stops, pad_token_id=pad)
                ref.append(out[0, len(p):].tolist())
        del hf
        if dev == "cuda":
            torch.cuda.empty_cache()
        total = sum(max(len(o), len(r)) for o, r in zip(alone, ref))
        return {"requests": len(prompts), "requests_equal": sum(o == r for o, r in zip(alone, ref)),
                "batched_requests_equal": sum(o == r for o, r in zip(batched, ref)),
                "token_agreement": round(sum(_common_prefix(o, r) for o, r in zip(alone, ref)) / max(total, 1), 4),
                "tokens": total, "seconds": round(time.perf_counter() - t0, 2),
                "detail": [{"prompt_tokens": len(p), "engine": o, "hf": r} for p, o, r in zip(prompts, alone, ref)]}

    fp32 = run(torch.float32)
    bf16 = run(torch.bfloat16)
    ok = fp32["requests_equal"] == fp32["requests"]
    return {"ok": ok, "model": a.engine_model if a.gpu else "debug (random weights)", "device": dev,
            "max_tokens": max_tokens, "fp32_requests_equal": f"{fp32['requests_equal']}/{fp32['requests']}",
            "fp32_batched_equal": f"{fp32['batched_requests_equal']}/{fp32['requests']}",
            "bf16_token_agreement": bf16["token_agreement"],
            "bf16_requests_equal": f"{bf16['requests_equal']}/{bf16['requests']}",
            "detail": {"float32": fp32, "bfloat16": bf16}}


# ---------------------------------------------------------------------------------------------------------------
# 3. pretraining throughput and MFU


def section_pretrain(a) -> dict:
    import statistics

    import torch

    from actors.model.config import get_config
    from actors.train.config import OptimConfig, ParallelConfig
    from actors.train.parallel import Dist, build_model_parts, init_value
    from actors.train.trainer import CausalLMLoss, Trainer, device_peak_flops
    from cluster.hardware import torch_dtype

    dev = torch.device("cuda" if a.gpu else "cpu")
    if a.gpu:
        name, batch, seq, warmup, steps = a.pretrain_model, a.pretrain_batch, a.pretrain_seq, \
            a.pretrain_warmup, a.pretrain_steps
    else:
        name, batch, seq, warmup, steps = "debug", 2, 64, 1, 1
    mcfg = get_config(name)
    dtype = torch_dtype(a.dtype, dev, field="--dtype")
    d = Dist(device=dev)
    t0 = time.perf_counter()
    (_, model), = build_model_parts(mcfg, ParallelConfig(compile=a.compile), d, dtype,
                                    lambda n, s: init_value(mcfg, n, s, 0))
    build_s = time.perf_counter() - t0
    optim = OptimConfig(lr=3e-4, warmup_steps=0, min_lr_ratio=1.0)
    peak = device_peak_flops(dev)
    trainer = Trainer(model, CausalLMLoss(), optim, warmup + steps + 8, d,
                      autocast_dtype=dtype if dtype != torch.float32 else None,
                      flops_per_token=mcfg.flops_per_token(seq), peak_flops=peak)
    gen = torch.Generator().manual_seed(0)
    ooms, metrics = [], []
    while len(metrics) < warmup + steps:
        batch_ids = torch.randint(0, mcfg.vocab_size, (batch, seq), generator=gen)
        try:
            metrics.append(trainer.train_step({"input_ids": batch_ids}))
        except torch.OutOfMemoryError:
            if metrics or batch == 1:
                raise
            ooms.append(batch)
            trainer.optimizer.zero_grad(set_to_none=True)
            batch //= 2
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    timed = metrics[warmup:]
    losses = [m["loss"] for m in metrics]
    tps = statistics.median(m["tokens_per_s"] for m in timed)
    mfu = statistics.median(m["mfu"] for m in timed) if all("mfu" in m for m in timed) else None
    res = {"model": name, "params": mcfg.num_params(), "dtype": _dname(dtype), "device": str(dev), "batch": batch,
           "seq_len": seq, "tokens_per_step": batch * seq, "warmup_steps": warmup, "timed_steps": steps,
           "tokens_per_s": round(tps, 1), "mfu": round(mfu, 4) if mfu is not None else None,
           "peak_flops": peak or None,
           "gflops_per_s": round(statistics.median(m["gflops_per_worker"] for m in timed), 1),
           "step_s": round(statistics.median(m["step_s"] for m in timed), 4), "build_s": round(build_s, 2),
           "peak_mem_gb": round(max(m["peak_mem_gb"] for m in metrics), 2),
           "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4), "oom_batches": ooms,
           "compile": a.compile}
    if dev.type == "cuda":
        res["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    finite = all(math.isfinite(x) for x in losses)
    res["ok"] = finite and (mfu is None or 0 < mfu < 1) and (not a.gpu or mfu is not None)
    if not finite:
        res["error"] = f"non-finite loss {losses}"
    elif a.gpu and mfu is None:
        res["error"] = f"no MFU: device_peak_flops knows no peak for {torch.cuda.get_device_name(dev)!r}"
    elif mfu is not None and not 0 < mfu < 1:
        res["error"] = f"MFU {mfu} outside (0, 1): the FLOP accounting or the timing is wrong"
    return res


# ---------------------------------------------------------------------------------------------------------------
# 4. bench/serve.py


def _on_gpu(start_server):
    """`start_server` whose replicas each take one GPU (and so load the model on cuda): the config it is given,
    a `ServeConfig` or a dict of its fields, with `num_gpus=1`."""
    import dataclasses

    def gpu(cfg):
        return dataclasses.replace(cfg, num_gpus=1) if dataclasses.is_dataclass(cfg) else {**cfg, "num_gpus": 1}

    def wrapped(*args, **kw):
        if args:
            args = (gpu(args[0]), *args[1:])
        elif "cfg" in kw:
            kw["cfg"] = gpu(kw["cfg"])
        else:  # the keyword form (model_dir=..., num_cpus=...)
            kw["num_gpus"] = 1
        return start_server(*args, **kw)

    return wrapped


def _serve_child(a) -> None:
    """Runs bench/serve.py's main in this process, with the model on cuda when the parent asked for the GPU."""
    import contextlib as _cl
    import io

    import bench.serve as bs

    argv = list(a.serve_argv)
    if a.gpu:
        import cluster

        cluster.connect()
        import ray

        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < 1:
            raise SystemExit(f"Ray sees no GPU (resources {ray.cluster_resources()}); the replica cannot use cuda")
        try:
            with _cl.redirect_stderr(io.StringIO()):
                bs.parse(argv + ["--num-gpus", "1"])
            argv += ["--num-gpus", "1"]  # serve.py has the option: use it
        except SystemExit:  # it has not: every start_server call of serve.py gets num_gpus=1
            import actors.serve.deployment as dep

            dep.start_server = _on_gpu(dep.start_server)
    bs.main(argv)


def section_serve(a) -> dict:
    workdir = Path(a.workdir)
    out_json = workdir / "serve-report.json"
    if a.gpu:
        from cluster.hardware import resolve_dtype

        dtype = resolve_dtype(a.dtype, "cuda", field="--dtype")
        dtype = dtype if dtype in ("bfloat16", "float32") else "bfloat16"  # serve.py's choices
        args = ["--model", a.serve_model, "--dtype", dtype, "--threads", "4",
                "--num-prompts", str(a.serve_num_prompts), "--max-concurrency", str(a.serve_max_concurrency),
                "--max-num-seqs", str(max(64, a.serve_max_concurrency)), "--max-num-batched-tokens", "8192",
                "--kv-cache-memory", "4GiB", "--greedy-check", "0", "--baseline", "none"]
    else:
        model = _debug_model(workdir)
        args = ["--model", str(model), "--dtype", "float32", "--threads", "1", "--num-prompts", "4",
                "--max-concurrency", "4", "--input-len-min", "8", "--input-len-max", "24", "--output-len-min", "4",
                "--output-len-max", "8", "--max-num-seqs", "4", "--max-num-batched-tokens", "256",
                "--kv-cache-memory", "32MiB", "--greedy-check", "2", "--baseline", "none"]
    args += ["--out", str(out_json)]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-child", "--workdir", str(workdir)]
    cmd += ["--gpu"] if a.gpu else []
    t0 = time.perf_counter()
    p = subprocess.run(cmd + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    sys.stdout.write(p.stdout[-30000:])
    summary = None
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                summary = json.loads(line)
                break
    res = {"ok": p.returncode == 0 and bool(summary) and (summary.get("ours_out_tok_s") or 0) > 0,
           "args": " ".join(args), "rc": p.returncode, "seconds": round(time.perf_counter() - t0, 1),
           "summary": summary}
    if out_json.exists():
        with contextlib.suppress(json.JSONDecodeError):
            res["detail"] = json.loads(out_json.read_text())
    if not res["ok"]:
        res["error"] = f"bench/serve.py rc {p.returncode}: {p.stdout[-600:]}"
    return res


# ---------------------------------------------------------------------------------------------------------------
# driver


def _child(a) -> None:
    """One section in this (child) process: its result as the last line, marked."""
    import torch

    if a.gpu:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: exact-match and kernel tolerances assume it
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    try:
        res = {"kernels": section_kernels, "engine": section_engine, "pretrain": section_pretrain,
               "serve": section_serve}[a.child](a)
    except Exception as e:  # noqa: BLE001 - the section's failure is its result
        traceback.print_exc()
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"[:1000]}
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    sys.stdout.flush()
    print("\n" + MARK + json.dumps(_finite(res), default=str), flush=True)


def _run_section(name: str, a, gpu: bool, workdir: Path, out_dir: Path) -> dict:
    """The section in a child process with a time limit; its marked line, or what went wrong."""
    limit = TIMEOUTS[name][0 if gpu else 1] * a.timeout_scale
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--workdir", str(workdir),
           "--dtype", a.dtype, "--engine-model", a.engine_model, "--engine-max-tokens", str(a.engine_max_tokens),
           "--pretrain-model", a.pretrain_model, "--pretrain-batch", str(a.pretrain_batch),
           "--pretrain-seq", str(a.pretrain_seq), "--pretrain-steps", str(a.pretrain_steps),
           "--pretrain-warmup", str(a.pretrain_warmup), "--serve-model", a.serve_model,
           "--serve-num-prompts", str(a.serve_num_prompts),
           "--serve-max-concurrency", str(a.serve_max_concurrency)]
    cmd += (["--gpu"] if gpu else ["--dry-run"]) + (["--compile"] if a.compile else [])
    env = dict(os.environ)
    if gpu:
        env.pop("TRITON_INTERPRET", None)  # compiled kernels, whatever the calling shell had
    else:
        env["TRITON_INTERPRET"] = "1"  # must be set before triton is imported: hence the child's environment
    env.setdefault("RAY_DEDUP_LOGS", "1")
    env.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    log = out_dir / f"{name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        try:
            rc = p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            rc = None
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)  # the child's own process group (Ray's processes included)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=grace)
                    break
    wall = round(time.perf_counter() - t0, 2)
    text = log.read_text(errors="replace")
    line = next((ln for ln in reversed(text.splitlines()) if ln.startswith(MARK)), None)
    if line is not None:
        res = json.loads(line[len(MARK):])
    elif rc is None:
        res = {"ok": False, "error": f"timed out after {limit:.0f} s; log tail: {text[-600:]}"}
    else:
        res = {"ok": False, "error": f"child exited {rc} without a result; log tail: {text[-600:]}"}
    res["wall_s"] = wall
    return res


def _headline(name: str, r: dict) -> dict:
    """The few numbers of a section that go on the final line (the report file has everything)."""
    keep = {"kernels": ("triton_kind", "kernels", "failures"),
            "engine": ("model", "fp32_requests_equal", "fp32_batched_equal", "bf16_token_agreement",
                       "bf16_requests_equal"),
            "pretrain": ("model", "dtype", "batch", "seq_len", "tokens_per_s", "mfu", "peak_mem_gb", "loss_first",
                         "loss_last", "oom_batches"),
            "serve": ("summary",)}[name]
    out = {"ok": bool(r.get("ok")), "wall_s": r.get("wall_s")}
    if r.get("error"):
        out["error"] = str(r["error"])[:300]
    for k in keep:
        if k in r:
            out[k] = r[k]
    if name == "kernels" and "kernels" in out:
        out["kernels"] = {k: {"cases": v["cases"], "failed": v["failed"], "worst_rel": float(f"{v['worst_rel']:.3g}")}
                          for k, v in out["kernels"].items()}
        out["failures"] = [{k: f.get(k) for k in ("kernel", "check", "dtype", "max_rel", "error") if k in f}
                           for f in out.get("failures", [])[:3]]
    return out


def main(argv=None) -> int:
    a = parse(argv)
    if a.serve_child:
        _serve_child(a)
        return 0
    if a.child:
        a.gpu = a.gpu and not a.dry_run
        _child(a)
        return 0

    import torch

    from cluster.hardware import precision_info

    t0 = time.perf_counter()
    has_cuda = torch.cuda.is_available()
    if a.require_gpu and not has_cuda:
        print(json.dumps({"ok": False, "error": f"--require-gpu: torch {torch.__version__} (CUDA build: "
                                                f"{torch.version.cuda}) sees no CUDA device"}))
        return 2
    gpu = has_cuda and not a.dry_run
    mode = "gpu" if gpu else "dry-run"
    names = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad:
        raise SystemExit(f"--sections: unknown {bad}; choose from {list(SECTIONS)}")
    out_dir = Path(a.out_dir or REPO / "runs" / "bench" / ("gpu_check" if gpu else "gpu_check-dry"))
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if gpu else "cpu"
    head = {"mode": mode, **precision_info(a.dtype, "cuda" if gpu else "cpu"), "device": device,
            "cuda": torch.version.cuda, **_versions()}
    if not gpu:
        head["dry_run_reason"] = "--dry-run" if a.dry_run else "no CUDA device visible to torch"
    print(f"gpu_check: {mode} on {device}, dtype {head['dtype']}, sections {names}; logs in {out_dir}", flush=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for name in names:
            r = _run_section(name, a, gpu, Path(tmp), out_dir)
            results[name] = r
            print(f"[{name}] {'ok' if r.get('ok') else 'FAILED'} in {r['wall_s']} s"
                  + (f": {str(r.get('error'))[:300]}" if r.get("error") else ""), flush=True)
    failed = [n for n, r in results.items() if not r.get("ok")]
    report = {"ok": not failed, **head, "failed": failed, "wall_s": round(time.perf_counter() - t0, 1),
              "out_dir": str(out_dir), "sections": results}
    report = _finite(report)
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    summary = {**{k: v for k, v in report.items() if k != "sections"},
               "sections": {n: _headline(n, r) for n, r in results.items()}}
    print(json.dumps(summary, default=str), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
