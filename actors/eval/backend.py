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

from cluster.hardware import precision_info


@dataclass
class LoglikelihoodRequest:
    """log p(continuation | context); a context given as chat messages is rendered with the chat template."""
    context: str | list[dict]
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


def split_pair(encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation, then
    encode(context + continuation) is split at len(encode(context))."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(context + continuation)
    ctx = encode(context)
    return ctx, whole[len(ctx):]


def pack_rows(lengths: list[int], rows_per_batch: int, max_batch_tokens: int | None = None
              ) -> list[list[tuple[int, list[tuple[int, int]]]]]:
    """First-fit decreasing: batches of at most `rows_per_batch` rows (fewer when rows are so long that the
    batch would pass `max_batch_tokens`), each row [used, [(item, offset)]], every row no longer than the
    batch's first (longest) item, so packing never lengthens a row's attention."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = []
    while order:
        cap = lengths[order[0]]
        limit = rows_per_batch if max_batch_tokens is None else max(1, min(rows_per_batch, max_batch_tokens // cap))
        rows: list = []
        rest = []
        for i in order:
            n = lengths[i]
            row = next((r for r in rows if r[0] + n <= cap), None)
            if row is None and len(rows) < limit:
                row = [0, []]
                rows.append(row)
            if row is None:
                rest.append(i)
                continue
            row[1].append((i, row[0]))
            row[0] += n
        batches.append([tuple(r) for r in rows])
        order = rest
    return batches


def stem_groups(contexts: list[list[int]], extra: list[int], min_shared: int, max_tokens: int,
                cost=lambda T: T) -> list[tuple[int, list[int]]]:
    """Group contexts that start with the same >= `min_shared` tokens: [(stem length, member indices)].
    Contexts are sorted so shared prefixes are neighbours; a context joins the group before it while the stem
    stays >= min_shared, the layout (stem + each member's remainder + `extra[i]` branch tokens) stays
    <= max_tokens, and `cost(layout length)` of the grown group is below the group's plus the context's own
    (a long shared row pays attention over all of it: sharing a 64-token prefix between 500-token prompts
    does not pay, sharing MMLU's ~550-token exemplars between 70-token questions does, ~4x). A context
    sharing nothing is a group of one whose stem is the whole context."""
    order = sorted(range(len(contexts)), key=lambda i: contexts[i])
    groups: list[tuple[int, list[int]]] = []
    stem, members = 0, []

    def size(st: int, ms: list[int]) -> int:
        return st + sum(len(contexts[i]) - st + extra[i] for i in ms)

    for i in order:
        if members:
            ref = contexts[members[0]]
            n = 0
            limit = min(stem, len(contexts[i]))
            while n < limit and ref[n] == contexts[i][n]:
                n += 1
            grown = size(n, members + [i])
            if (n >= min_shared and grown <= max_tokens
                    and cost(grown) <= cost(size(stem, members)) + cost(len(contexts[i]) + extra[i])):
                stem, members = n, members + [i]
                continue
            groups.append((stem, members))
        stem, members = len(contexts[i]), [i]
    if members:
        groups.append((stem, members))
    # a context equal to its group's stem has no remainder; keep at least one stem token for every member
    return [(max(1, min(st, min(len(contexts[i]) for i in ms))), ms) for st, ms in groups]


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

    def __init__(self, model_dir: str | Path, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 16, progress: bool = True, num_threads: int | None = None,
                 max_num_seqs: int = 32, kv_cache_memory: str = "1GiB"):
        from actors.model.hf import load_hf
        from actors.model.tokenizer import load_tokenizer, stop_token_ids

        if num_threads:
            torch.set_num_threads(max(1, int(num_threads)))
        self.model_dir = str(model_dir)
        self.name = Path(model_dir).name
        self.device = pick_device(device)
        self.precision = precision_info(dtype, self.device)
        self.model = load_hf(model_dir, dtype=getattr(torch, self.precision["dtype"]), device=self.device)
        self.tokenizer = load_tokenizer(model_dir)
        self.batch_size = batch_size
        self.max_num_seqs, self.kv_cache_memory = max_num_seqs, kv_cache_memory
        # contexts sharing this many leading tokens may share their computation (a few-shot prompt's
        # exemplars) when the cost model in score_trees says it pays; a shared row holds at most
        # max_group_tokens (a batch of such rows is cut to batch_size x 512 tokens)
        self.min_shared_prefix, self.max_group_tokens = 64, 4096
        self._engine = None
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
        return split_pair(self.tok_encode, context, continuation)

    # ---- scoring --------------------------------------------------------------------------------
    def context_text(self, context) -> str:
        """A request's context: text as given, or chat messages rendered with the chat template and the
        assistant's generation prompt (`--apply-chat-template`)."""
        if isinstance(context, str):
            return context
        from actors.model.chat import render_chat

        return render_chat(self.tokenizer, context, None, add_generation_prompt=True)

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[tuple[float, bool]]:
        """Requests with the same context tokens (a question and its choices) become one tree: the context is
        computed once and every continuation attends to it (see `score_trees`)."""
        L = self.max_length
        trees: dict[tuple, list] = {}
        singles = []
        for i, req in enumerate(requests):
            ctx, cont = self.encode_pair(self.context_text(req.context), req.continuation)
            if not cont:
                raise ValueError(f"loglikelihood: continuation {req.continuation!r} encodes to no tokens")
            if len(ctx) + len(cont) <= L + 1:
                trees.setdefault(tuple(ctx), []).append((i, cont))
            else:  # lm-eval keeps the last max_length+1 tokens (context truncated on the left)
                toks = (ctx + cont)[-(L + 1):]
                n = min(len(cont), len(toks) - 1)
                singles.append((toks[:-n], [(i, toks[-n:])]))
        return self.score_trees([(list(c), b) for c, b in trees.items()] + singles, len(requests))

    def loglikelihood_rolling(self, requests: list[RollingRequest]) -> list[tuple[float, int]]:
        items, owner = [], []
        for k, req in enumerate(requests):
            toks = self.tok_encode(req.text) if req.text is not None else list(req.token_ids)
            for toks_w, n in self.rolling_windows(toks, prefix=req.text is not None):
                items.append((toks_w[:-n], [(len(items), toks_w[-n:])]))
                owner.append((k, n))
        scores = self.score_trees(items, len(items))
        out = [[0.0, 0] for _ in requests]
        for (ll, _), (k, n) in zip(scores, owner):
            out[k][0] += ll
            out[k][1] += n
        return [(ll, n) for ll, n in out]

    @torch.no_grad()
    def score_trees(self, trees: list[tuple[list[int], list[tuple[int, list[int]]]]], n_out: int,
                    desc: str = "score") -> list[tuple[float, bool]]:
        """Score continuations that share a context. A tree (ctx, [(out_index, cont), ...]) is laid out as
        ctx + every cont but its last token, with positions restarting after ctx for each branch and a mask
        letting a branch see ctx and itself only. For ARC's 4 choices that is ~50 tokens instead of 4 x 35;
        the context's logits are never projected except its last position's (it predicts every branch's
        first token). Trees whose contexts start with the same >= `min_shared_prefix` tokens (a few-shot
        prompt: MMLU's description and 5 exemplars, ~550 tokens per subject) share that stem as well, each
        tree's own remainder seeing the stem and its branches seeing both. Layouts are packed longest first
        into the rows of a batch (first fit: a short one fills the room a longer one left, with its own block
        of the mask), so padding is ~1%; a pad token sees only itself.

        Returns, per out_index, (sum log p(cont | ctx), whether every cont token is the argmax)."""
        layouts = []
        cfg = self.model.config
        hd = cfg.head_dim or cfg.hidden_size // cfg.num_attention_heads
        # multiply-adds per token of one layer: the projections and MLP, plus attention over a row of T positions
        # (the masked SDPA computes every pair of the row)
        linear = cfg.hidden_size * hd * 2 * (cfg.num_attention_heads + cfg.num_key_value_heads) \
            + 3 * cfg.hidden_size * cfg.intermediate_size
        groups = stem_groups([t[0] for t in trees], [sum(len(c) - 1 for _, c in t[1]) for t in trees],
                             self.min_shared_prefix, self.max_group_tokens,
                             cost=lambda T: T * (linear + 2 * T * cfg.num_attention_heads * hd))
        for stem_len, members in groups:
            ids = list(trees[members[0]][0][:stem_len])
            pos = list(range(stem_len))
            items = []
            for r in members:
                ctx, branches = trees[r]
                a = len(ids)
                ids += ctx[stem_len:]
                pos += range(stem_len, len(ctx))
                pred = len(ids) - 1  # the context's last position predicts every branch's first token
                spans = []
                for _, cont in branches:
                    c = len(ids)
                    ids += cont[:-1]  # the last token only is a target, never an input
                    pos += range(len(ctx), len(ctx) + len(cont) - 1)
                    spans.append((c, len(ids)))
                items.append((r, (a, pred + 1), pred, spans))
            layouts.append((ids, pos, stem_len, items))
        out: list[tuple[float, bool] | None] = [None] * n_out
        batches = pack_rows([len(x[0]) for x in layouts], self.batch_size, self.batch_size * 512)
        for batch in _progress(batches, self.progress and len(batches) > 1, desc):
            B, T = len(batch), max(used for used, _ in batch)
            ids = torch.full((B, T), self.eos_id, dtype=torch.long)
            positions = torch.zeros((B, T), dtype=torch.long)
            mask = torch.eye(T, dtype=torch.bool).repeat(B, 1, 1)  # (B, T, T); pads see themselves
            want = torch.zeros((B, T), dtype=torch.bool)  # positions whose logits predict a scored token
            for b, (_, placed) in enumerate(batch):
                for g, o in placed:  # layout g at offset o of row b
                    toks, pos, s, items = layouts[g]
                    ids[b, o:o + len(toks)] = torch.tensor(toks, dtype=torch.long)
                    positions[b, o:o + len(toks)] = torch.tensor(pos, dtype=torch.long)
                    mask[b, o:o + s, o:o + s] = torch.ones(s, s, dtype=torch.bool).tril()
                    for _, (ra, rb), pred, spans in items:
                        if rb > ra:  # this tree's own part of the context: sees the stem and itself
                            mask[b, o + ra:o + rb, o:o + s] = True
                            mask[b, o + ra:o + rb, o + ra:o + rb] = torch.ones(rb - ra, rb - ra, dtype=torch.bool).tril()
                        want[b, o + pred] = True
                        for c, e in spans:  # a branch sees the stem, its tree's context and itself
                            mask[b, o + c:o + e, o:o + s] = True
                            mask[b, o + c:o + e, o + ra:o + rb] = True
                            mask[b, o + c:o + e, o + c:o + e] = torch.ones(e - c, e - c, dtype=torch.bool).tril()
                            want[b, o + c:o + e] = True
            dev = self.device
            logits = self.model(ids.to(dev), positions=positions.to(dev), attn_mask=mask[:, None].to(dev),
                                logits_mask=want.to(dev)).float()  # (N, V), rows of `want` in row-major order
            # log p(t) = logit_t - logsumexp(logits): one pass over each 49152-wide row instead of writing a
            # whole log-softmax copy (28k scored rows x 49152 x 4 bytes = 5.6 GB of stores for ARC+HellaSwag+PIQA)
            top = logits.amax(dim=-1)  # (N,); greedy = the target's logit is the row's max
            lse = top + (logits - top[:, None]).exp_().sum(-1).log()  # (N,)
            index = torch.full((B, T), -1, dtype=torch.long)
            index[want] = torch.arange(int(want.sum()))
            picks, targets, owners = [], [], []
            for b, (_, placed) in enumerate(batch):
                for g, o in placed:
                    for r, _, pred, spans in layouts[g][3]:
                        last = int(index[b, o + pred])
                        for (k, cont), (c, e) in zip(trees[r][1], spans):
                            picks += [last] + index[b, o + c:o + e].tolist()
                            targets += cont
                            owners.append((k, len(cont)))
            picks_t = torch.tensor(picks, device=logits.device)
            targets_t = torch.tensor(targets, device=logits.device)
            target_logit = logits[picks_t, targets_t]
            # summed in float64: a continuation's ~100 log-probs summed in float32 round at ~1e-5
            lp = (target_logit - lse[picks_t]).double().tolist()
            hit = (target_logit >= top[picks_t]).tolist()
            start = 0
            for k, n in owners:
                out[k] = (sum(lp[start:start + n]), all(hit[start:start + n]))
                start += n
        return out  # type: ignore[return-value]

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

    # ---- generation -----------------------------------------------------------------------------
    def render(self, req: GenerateRequest) -> str:
        """The prompt text: verbatim, or the messages (+ tools) through the chat template exactly as the
        server renders them (actors.model.chat.render_chat)."""
        from actors.model.chat import render_chat

        if req.prompt is not None:
            return req.prompt
        return render_chat(self.tokenizer, req.messages, req.tools, add_generation_prompt=True)

    @property
    def engine(self):
        """The serving engine (continuous batching over a paged KV cache): eval has no decode loop of its own."""
        if self._engine is None:
            from actors.engine import EngineConfig, LLMEngine

            self._engine = LLMEngine(self.model, self.tokenizer, EngineConfig(
                max_num_seqs=self.max_num_seqs, kv_cache_memory=self.kv_cache_memory))
        return self._engine

    def generate(self, requests: list[GenerateRequest]) -> list[str]:
        """Greedy decoding through the serving engine until an end-of-sequence / end-of-turn token, a stop
        string (cut off, as lm-eval's `until`), the token budget or the context limit. A prompt longer than
        the context keeps its last tokens, leaving room for the budget (lm-eval's left truncation)."""
        from actors.engine import SamplingParams

        eng = self.engine
        L = eng.max_model_len
        ids = []
        for k, r in enumerate(requests):
            budget = min(r.max_new_tokens, L - 1)
            prompt = self.tok_encode(self.render(r))[-(L - budget):]
            rid = f"gen-{k}"
            eng.add_request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=budget, stop=list(r.stop)))
            ids.append(rid)
        texts: dict[str, str] = {}
        bar = _progress(None, self.progress and len(requests) > 1, "generate", total=len(requests)) \
            if self.progress and len(requests) > 1 else None
        while len(texts) < len(ids):
            for o in eng.step():
                if o.finished:
                    texts[o.request_id] = o.text
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [texts[rid] for rid in ids]
