"""`OpenAIBackend`: any OpenAI-compatible server as an eval backend (our Serve deployment, vLLM, ...).

- loglikelihood: `/v1/completions` with `echo: true, logprobs: 1, max_tokens: 0` on context + continuation; the
  continuation's tokens are those starting at or after the context's end (the response's `text_offset`), so no
  local tokenizer is needed. Greedy = each of those tokens is its position's top-1. With a local tokenizer
  (`tokenizer=`), the prompt goes as token ids split exactly as the local backend splits it (lm-eval's rule).
- loglikelihood_rolling: the same echo over the text (the first token, which has no context, is not scored).
- generate: `/v1/completions` for prompts, `/v1/chat/completions` for messages (+ tools), greedy.

A server without echo + logprobs fails with an error that says so, before any score is reported.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from actors.eval.backend import (GenerateRequest, LoglikelihoodRequest, ModelBackend, RollingRequest, _progress,
                                 split_pair)


class EndpointError(RuntimeError):
    """The endpoint cannot answer what a task needs; the message says what is missing and what to do."""


class OpenAIBackend(ModelBackend):
    def __init__(self, base_url: str, model: str, batch_size: int = 16, progress: bool = True,
                 concurrency: int = 8, timeout_s: float = 600.0, tokenizer: str | None = None,
                 api_key: str = "EMPTY"):
        self.base = base_url.rstrip("/")
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        self.model, self.name = model, model
        self.batch_size, self.progress, self.concurrency = batch_size, progress, max(1, concurrency)
        self.timeout_s, self.api_key = timeout_s, api_key
        self.tokenizer = None
        if tokenizer:
            from actors.model.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(tokenizer)

    # ---- HTTP ----
    def _post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:400]
            raise EndpointError(f"{self.base}{path} answered HTTP {e.code}: {detail}") from None
        except urllib.error.URLError as e:
            raise EndpointError(f"{self.base}{path} is not reachable ({e.reason}); is the server up? "
                                "--model takes its base URL, e.g. http://127.0.0.1:8000/v1") from None

    def _map(self, fn, batches: list, desc: str, total: int) -> list:
        bar = _progress(None, True, desc, total=total) if self.progress and total > 1 else None
        out = []
        with ThreadPoolExecutor(self.concurrency) as pool:
            for batch, res in zip(batches, pool.map(fn, batches)):
                out.extend(res)
                if bar is not None:
                    bar.update(len(batch))
        if bar is not None:
            bar.close()
        return out

    def _batches(self, items: list) -> list[list]:
        return [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]

    # ---- scoring ----
    def _echo(self, prompts: list) -> list[dict]:
        """The echoed logprobs of each prompt (text or token ids): {tokens, token_logprobs, top_logprobs,
        text_offset}."""
        resp = self._post("/completions", {"model": self.model, "prompt": prompts, "max_tokens": 0, "echo": True,
                                           "logprobs": 1, "temperature": 0.0})
        choices = sorted(resp.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise EndpointError(f"{self.base}/completions returned {len(choices)} choices for {len(prompts)} prompts")
        out = []
        for c in choices:
            lp = c.get("logprobs") or {}
            if not lp.get("token_logprobs") or not lp.get("text_offset"):
                raise EndpointError(
                    f"{self.base}/completions returned no prompt logprobs for echo: true, logprobs: 1; "
                    "loglikelihood tasks (multiple_choice, perplexity) need a server with echo + logprobs "
                    "(our Serve deployment, vLLM); with this server run generate_until tasks only")
            out.append(lp)
        return out

    @staticmethod
    def _score(lp: dict, first: int) -> tuple[float, bool]:
        """Sum of the token logprobs from token index `first` on, and whether each is its position's top-1."""
        total, greedy = 0.0, True
        for i in range(first, len(lp["token_logprobs"])):
            v = lp["token_logprobs"][i]
            if v is None:
                raise EndpointError("the endpoint gave no logprob for a continuation token (the first prompt token "
                                    "has none): give the request a non-empty context")
            total += v
            top = (lp.get("top_logprobs") or [None] * (i + 1))[i] or {}
            if top:
                best = max(top.items(), key=lambda kv: kv[1])
                greedy = greedy and (best[0] == lp["tokens"][i] or best[1] <= v)
        return total, greedy

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[tuple[float, bool]]:
        items = []
        for r in requests:
            if not isinstance(r.context, str):
                raise EndpointError("the OpenAI backend scores text contexts; --apply-chat-template with an endpoint "
                                    "works for generate_until tasks only (the chat template lives on the server)")
            if self.tokenizer is not None:
                ctx, cont = split_pair(lambda t: self.tokenizer.encode(t, add_special_tokens=False), r.context,
                                       r.continuation)
                items.append((ctx + cont, len(ctx)))
            else:
                ctx = r.context.rstrip()  # trailing spaces belong to the continuation (lm-eval's rule)
                items.append((ctx + r.context[len(ctx):] + r.continuation, len(ctx)))

        def run(batch):
            lps = self._echo([p for p, _ in batch])
            out = []
            for (prompt, cut), lp in zip(batch, lps):
                if isinstance(prompt, list):  # token ids: the continuation starts at token `cut`
                    first = cut
                else:  # text: the first token starting at or after the context's end
                    first = next((i for i, o in enumerate(lp["text_offset"]) if o >= cut), len(lp["text_offset"]))
                    if first == 0:
                        first = 1
                out.append(self._score(lp, first))
            return out

        return self._map(run, self._batches(items), "loglikelihood", len(items))

    def loglikelihood_rolling(self, requests: list[RollingRequest]) -> list[tuple[float, int]]:
        prompts = [r.text if r.text is not None else list(r.token_ids) for r in requests]

        def run(batch):
            return [(self._score(lp, 1)[0], len(lp["token_logprobs"]) - 1) for lp in self._echo(batch)]

        return self._map(run, self._batches(prompts), "rolling", len(prompts))

    def generate(self, requests: list[GenerateRequest]) -> list[str]:
        def run(batch):
            out = []
            for r in batch:
                if r.messages is not None:
                    body = {"model": self.model, "messages": r.messages, "max_tokens": r.max_new_tokens,
                            "temperature": 0.0}
                    if r.tools:
                        body["tools"] = r.tools
                    if r.stop:
                        body["stop"] = r.stop[:4]
                    msg = self._post("/chat/completions", body)["choices"][0]["message"]
                    text = msg.get("content") or ""
                    for call in msg.get("tool_calls") or []:  # back to the text form our parsers read
                        fn = call["function"]
                        text += f'<tool_call>{{"name": {json.dumps(fn["name"])}, "arguments": {fn["arguments"]}}}' \
                                '</tool_call>'
                else:
                    body = {"model": self.model, "prompt": r.prompt, "max_tokens": r.max_new_tokens,
                            "temperature": 0.0}
                    if r.stop:
                        body["stop"] = r.stop[:4]  # OpenAI allows 4; the rest are applied here
                    text = self._post("/completions", body)["choices"][0]["text"]
                for s in r.stop:
                    text = text.split(s)[0]
                out.append(text)
            return out

        return self._map(run, [[r] for r in requests], "generate", len(requests))
