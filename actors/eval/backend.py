"""Model backends answer the three request kinds of lm-evaluation-harness.

- `loglikelihood(LoglikelihoodRequest(context, continuation))` -> (sum log p(continuation | context), is_greedy)
- `loglikelihood_rolling(RollingRequest(text | token_ids))`     -> (sum log p over scored tokens, n_scored)
- `generate(GenerateRequest(prompt | messages+tools, stop, max_new_tokens))` -> generated text

`ModelBackend` is the interface; `LocalModelBackend` runs our Transformer in-process. An OpenAI-endpoint
backend (messages go out as-is, logprobs come back) or an eval-worker-pool backend (requests fanned out to
actors) only has to implement the same three methods.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass
class LoglikelihoodRequest:
    context: str
    continuation: str


@dataclass
class RollingRequest:
    """Score a whole text (lm-eval `loglikelihood_rolling`) or a row of token ids.

    text: every token is scored, the first one conditioned on the EOS token (lm-eval's prefix token).
    token_ids: a packed pretraining row; tokens 1.. are scored, token 0 only serves as context (it has none).
    """
    text: str | None = None
    token_ids: list[int] | None = None

    def __post_init__(self):
        if (self.text is None) == (self.token_ids is None):
            raise ValueError("RollingRequest: give exactly one of text= or token_ids=")


@dataclass
class GenerateRequest:
    """Greedy generation. `messages` (+ `tools`) are rendered with the model's chat template and a
    generation prompt; `prompt` is used verbatim."""
    prompt: str | None = None
    messages: list[dict] | None = None
    tools: list[dict] | None = None
    stop: list[str] = field(default_factory=list)
    max_new_tokens: int = 48

    def __post_init__(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("GenerateRequest: give exactly one of prompt= or messages=")


class ModelBackend:
    """What a task may ask of a model. Results come back in request order."""

    name: str = "backend"

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[tuple[float, bool]]:
        raise NotImplementedError

    def loglikelihood_rolling(self, requests: list[RollingRequest]) -> list[tuple[float, int]]:
        raise NotImplementedError

    def generate(self, requests: list[GenerateRequest]) -> list[str]:
        raise NotImplementedError


def _progress(it, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, total=total, mininterval=2.0, leave=False)


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("eval.device: 'cuda' requested but torch sees no GPU; use 'auto' or 'cpu'")
    return device


class LocalModelBackend(ModelBackend):
    """Our Transformer + tokenizer, loaded once from a Hugging Face folder (`save_hf` output)."""

    def __init__(self, model_dir: str | Path, device: str = "auto", dtype: str = "float32",
                 batch_size: int = 16, progress: bool = True, num_threads: int | None = None,
                 gen_batch_size: int = 16):
        from actors.model.hf import load_hf
        from actors.model.tokenizer import load_tokenizer, stop_token_ids

        if num_threads:
            torch.set_num_threads(max(1, int(num_threads)))
        self.model_dir = str(model_dir)
        self.name = Path(model_dir).name
        self.device = pick_device(device)
        self.model = load_hf(model_dir, dtype=getattr(torch, dtype), device=self.device)
        self.tokenizer = load_tokenizer(model_dir)
        self.batch_size = batch_size
        self.gen_batch_size = gen_batch_size
        self.progress = progress
        self.max_length = self.model.config.max_position_embeddings
        self.eos_id = self.model.config.eos_token_id
        self.stop_ids = set(stop_token_ids(self.tokenizer)) | {self.eos_id}

    # ---- tokenisation -------------------------------------------------------------------------------
    def tok_encode(self, text: str) -> list[int]:
        # lm-eval's HFLM encodes with add_special_tokens=False for causal LMs (no BOS unless asked);
        # our tokenizer has no BOS at all, so this is also what the model saw in pretraining.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token boundary handling exactly as lm-eval's `HFLM._encode_pair` (lm_eval/models/huggingface.py,
        v0.4.x): trailing spaces of the context move to the continuation, then encode(context +
        continuation) is split at len(encode(context)).

        Why whole-then-split rather than encoding the two parts separately: a BPE merge can cross the
        boundary (" Paris" is one token, "Answer:" + " Paris" must not become "Answer:" "Ġ" "Paris"), so the
        tokens scored are the ones the model would really produce after the context. An empty context is
        replaced by the EOS token (lm-eval's `prefix_token_id`), so the first continuation token is scored.
        """
        if context == "":
            return [self.eos_id], self.tok_encode(continuation)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):]

    # ---- scoring --------------------------------------------------------------------------------
    @torch.no_grad()
    def score_tokens(self, items: list[tuple[list[int], int]], desc: str = "score") -> list[tuple[float, bool]]:
        """For each (tokens, n): sum of log p(tokens[-n:]) given everything before it, and whether each of
        those n tokens is the argmax. Batched with right padding (causal attention never looks right, so
        padding cannot change the real positions); sorted longest first so batches hold similar lengths
        and an out-of-memory shows up on the first batch, as lm-eval's Collator does."""
        order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
        out: list[tuple[float, bool] | None] = [None] * len(items)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in _progress(batches, self.progress and len(batches) > 1, desc):
            inputs = [items[i][0][:-1] for i in batch]  # logits at position t predict token t+1
            T = max(len(x) for x in inputs)
            ids = torch.full((len(batch), T), self.eos_id, dtype=torch.long)
            scored = torch.zeros((len(batch), T), dtype=torch.bool)  # positions predicting a scored token
            for r, (x, i) in enumerate(zip(inputs, batch)):
                ids[r, :len(x)] = torch.tensor(x, dtype=torch.long)
                scored[r, len(x) - items[i][1]:len(x)] = True
            # logits only where a token is scored: the vocabulary projection of every context position would
            # be ~20% of the work for a 49k-token vocabulary
            logits = self.model(ids.to(self.device), logits_mask=scored.to(self.device))  # (N, V), row-major
            start = 0
            for r, i in enumerate(batch):
                toks, n = items[i]
                lp = F.log_softmax(logits[start:start + n].float(), dim=-1)  # (n, V)
                start += n
                target = torch.tensor(toks[-n:], device=lp.device)
                ll = lp.gather(-1, target[:, None]).sum().item()
                greedy = bool((lp.argmax(-1) == target).all().item())
                out[i] = (ll, greedy)
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[tuple[float, bool]]:
        items = []
        for req in requests:
            ctx, cont = self.encode_pair(req.context, req.continuation)
            if not cont:
                raise ValueError(f"loglikelihood: continuation {req.continuation!r} encodes to no tokens")
            # lm-eval keeps the last max_length+1 tokens (context truncated on the left).
            toks = (ctx + cont)[-(self.max_length + 1):]
            items.append((toks, min(len(cont), len(toks) - 1)))
        return self.score_tokens(items, desc="loglikelihood")

    def rolling_windows(self, tokens: list[int], prefix: bool) -> list[tuple[list[int], int]]:
        """Windows (tokens, n_scored) covering every scored token once, each with as much left context as
        fits in max_position_embeddings (lm-eval's get_rolling_token_windows with context_len=1)."""
        seq = ([self.eos_id] + tokens) if prefix else list(tokens)
        L = self.max_length
        windows, a = [], 1  # target positions a..len(seq)-1 still to score
        while a < len(seq):
            b = min(a + L, len(seq))        # score seq[a:b], at most L targets
            start = max(0, b - 1 - L)       # inputs seq[start:b-1] (<= L positions) predict seq[start+1:b]
            windows.append((seq[start:b], b - a))
            a = b
        return windows

    def loglikelihood_rolling(self, requests: list[RollingRequest]) -> list[tuple[float, int]]:
        items, owner = [], []
        for k, req in enumerate(requests):
            toks = self.tok_encode(req.text) if req.text is not None else list(req.token_ids)
            for w in self.rolling_windows(toks, prefix=req.text is not None):
                items.append(w)
                owner.append(k)
        scores = self.score_tokens(items, desc="rolling")
        out = [[0.0, 0] for _ in requests]
        for (ll, _), (_, n), k in zip(scores, items, owner):
            out[k][0] += ll
            out[k][1] += n
        return [(ll, n) for ll, n in out]

    # ---- generation -----------------------------------------------------------------------------
    def render(self, req: GenerateRequest) -> str:
        """The prompt text: verbatim, or the messages (+ tools) through the chat template exactly as the
        server renders them (actors.model.chat.render_chat)."""
        from actors.model.chat import render_chat

        if req.prompt is not None:
            return req.prompt
        return render_chat(self.tokenizer, req.messages, req.tools, add_generation_prompt=True)

    def generate(self, requests: list[GenerateRequest]) -> list[str]:
        """Greedy decoding, batched (actors.model.generate), until a stop token id (EOS, end of turn), the
        token budget or the context limit; text is cut at the first stop string, which is not returned
        (lm-eval `until` rule; greedy tokens before it do not depend on what follows)."""
        from actors.model.generate import greedy_generate

        prompts = [self.tok_encode(self.render(r)) for r in requests]
        bar = (lambda it: _progress(it, True, "generate")) if self.progress and len(requests) > 1 else None
        outs = greedy_generate(self.model, prompts, [r.max_new_tokens for r in requests], self.stop_ids,
                               self.max_length, batch_size=self.gen_batch_size, pad_id=self.eos_id, progress=bar)
        texts = []
        for r, ids in zip(requests, outs):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            for s in r.stop:
                text = text.split(s)[0]
            texts.append(text)
        return texts
