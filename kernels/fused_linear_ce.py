"""Fused vocabulary projection + cross-entropy, chunked so the (tokens x vocab) logits are never whole in memory.

`linear_cross_entropy(hidden (N, d), weight (V, d), targets (N,))` returns the summed next-token loss over the
rows whose target is not `ignore_index`. Rows go through in chunks: each chunk's logits are computed, turned into
their loss and, in the same pass, into their gradient (softmax - one-hot), which is immediately multiplied back
into the hidden-state and weight gradients; backward only scales the stored gradients. For a 49152-word vocabulary
and 2048 tokens the unfused path holds ~1.2 GB of logits, their fp32 copy and gradients; here one chunk (~50 MB).

The per-row softmax/loss/gradient step is the Triton kernel `_ce_rows_kernel` on CUDA (one program per row, an
online max/sum over the vocabulary, the gradient written over the logits in place) and `ce_rows_reference` in
torch elsewhere; both have the same contract and are tested against each other under `TRITON_INTERPRET=1`.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # noqa: BLE001 - triton missing or broken on this platform
    HAVE_TRITON = False

# rows per chunk: the chunk's logits in the compute dtype (512 x 49152 bf16 = 50 MB) are the largest temporary
CHUNK_ROWS = 512
# rows per softmax pass inside a chunk on CPU: 64 x 49152 fp32 = 12.5 MB stays in a 32 MB L3
_SUB_ROWS = 64


def ce_rows_reference(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """In place: logits (n, V) become d(loss)/d(logits) = softmax - one-hot (0 on ignored rows), in their own
    dtype; returns the per-row loss (n,) in fp32 (0 on ignored rows). Softmax in fp32."""
    n = logits.shape[0]
    losses = torch.empty(n, dtype=torch.float32, device=logits.device)
    for s in range(0, n, _SUB_ROWS):
        lf = logits[s:s + _SUB_ROWS].float()  # (r, V)
        t = targets[s:s + _SUB_ROWS]
        valid = t != ignore_index
        tt = torch.where(valid, t, torch.zeros_like(t))
        lse = torch.logsumexp(lf, dim=-1)  # (r,)
        losses[s:s + _SUB_ROWS] = torch.where(valid, lse - lf.gather(1, tt[:, None])[:, 0], 0.0)
        lf.sub_(lse[:, None]).exp_()  # softmax
        lf.scatter_add_(1, tt[:, None], torch.full_like(lf[:, :1], -1.0))
        lf.mul_(valid[:, None])
        logits[s:s + _SUB_ROWS] = lf.to(logits.dtype)
    return losses


if HAVE_TRITON:

    @triton.jit
    def _ce_rows_kernel(X, T, LOSS, stride, V, ignore_index, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        base = X + row.to(tl.int64) * stride
        t = tl.load(T + row)
        m = -float("inf")
        s = 0.0
        for start in range(0, V, BLOCK):  # online max / sum of exp over the vocabulary
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(base + cols, mask=cols < V, other=-float("inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        valid = t != ignore_index
        xt = tl.load(base + tl.where(valid, t, 0)).to(tl.float32)
        tl.store(LOSS + row, tl.where(valid, lse - xt, 0.0))
        for start in range(0, V, BLOCK):  # gradient over the logits, in place
            cols = start + tl.arange(0, BLOCK)
            cmask = cols < V
            x = tl.load(base + cols, mask=cmask, other=0.0).to(tl.float32)
            g = tl.exp(x - lse) - tl.where(cols == t, 1.0, 0.0)
            g = tl.where(valid, g, 0.0)
            tl.store(base + cols, g.to(X.dtype.element_ty), mask=cmask)


def ce_rows_triton(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    if not HAVE_TRITON:
        raise RuntimeError("triton is not importable here; use ce_rows_reference")
    n, V = logits.shape
    assert logits.stride(1) == 1, "logits rows must be contiguous"
    losses = torch.empty(n, dtype=torch.float32, device=logits.device)
    _ce_rows_kernel[(n,)](logits, targets.contiguous(), losses, logits.stride(0), V, ignore_index,
                          BLOCK=min(4096, triton.next_power_of_2(V)))
    return losses


def ce_rows(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Triton on CUDA, the torch reference elsewhere (same contract)."""
    if HAVE_TRITON and logits.is_cuda:
        return ce_rows_triton(logits, targets, ignore_index)
    return ce_rows_reference(logits, targets, ignore_index)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, chunk: int):
        w = weight.to(hidden.dtype)
        wt = w.t().contiguous()  # (d, V): once, not a transposed copy inside every chunk's matmul
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk]
            logits = h @ wt  # (n, V) in the compute dtype
            total += ce_rows(logits, targets[s:s + chunk], ignore_index).sum()
            if grad_h is not None:
                grad_h[s:s + chunk] = logits @ w
            if grad_w is not None:
                grad_w += (logits.t() @ h).float()
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """Sum over rows of cross_entropy(hidden @ weight.T, targets), rows with `ignore_index` skipped; gradients
    for `hidden` and `weight`. hidden (N, d) in the compute dtype, weight (V, d), targets (N,) int64."""
    return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk)


def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   ignore_index: int = -100) -> torch.Tensor:
    """The unfused definition (whole logits, fp32 softmax): the oracle of the tests."""
    logits = (hidden @ weight.to(hidden.dtype).t()).float()
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")


class _LinearTokenLoss(torch.autograd.Function):
    """Per-row losses (N,) instead of their sum: preference losses need each sequence's log-probability, and
    their upstream gradient per row is known only in backward, so backward recomputes each chunk's logits (one
    more projection) instead of storing gradients in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, chunk: int):
        wt = weight.to(hidden.dtype).t().contiguous()  # (d, V)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            out[s:s + chunk] = ce_rows(hidden[s:s + chunk] @ wt, targets[s:s + chunk], ignore_index)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.ignore_index, ctx.chunk = ignore_index, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets = ctx.saved_tensors
        w = weight.to(hidden.dtype)
        wt = w.t().contiguous()
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[s:s + ctx.chunk]
            logits = h @ wt
            ce_rows(logits, targets[s:s + ctx.chunk], ctx.ignore_index)  # logits -> softmax - one-hot, in place
            logits.mul_(grad_out[s:s + ctx.chunk, None].to(logits.dtype))
            if grad_h is not None:
                grad_h[s:s + ctx.chunk] = logits @ w
            if grad_w is not None:
                grad_w += (logits.t() @ h).float()
        return grad_h, grad_w.to(weight.dtype) if grad_w is not None else None, None, None, None


def linear_token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        ignore_index: int = -100, chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """Per-row cross_entropy(hidden @ weight.T, targets) (N,) fp32, 0 on `ignore_index` rows (a row's
    log-probability of its target is minus this); chunked like `linear_cross_entropy`, with gradients."""
    return _LinearTokenLoss.apply(hidden, weight, targets, ignore_index, chunk)


def linear_token_losses_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                  ignore_index: int = -100) -> torch.Tensor:
    logits = (hidden @ weight.to(hidden.dtype).t()).float()
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")
