"""Grammar-guided decoding: a request's tokens masked to what a Lark grammar (with embedded JSON schemas) allows,
through llguidance (the matcher vLLM, SGLang and llama.cpp use; ~0.1 ms a token for a 49k vocabulary).

A guide without a trigger covers the whole output (`response_format`: JSON, or JSON under a schema) and ends it
where the grammar completes (finish reason "stop"), so a finished output always parses.

A guide may be lazy, as llama.cpp's tool-call grammars are: free text until the output produces `trigger`, then
the grammar from there until it completes, then free again (so a turn may hold several calls, or none). `primed`
starts it inside the grammar with that text already consumed (a prompt that ends mid-call: tool_choice
"required" or a named function). Text that cannot continue the grammar (a trigger the model ended mid-token in an
unexpected way) leaves that stretch unguided rather than failing the request.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GrammarSpec:
    grammar: str            # Lark, as llguidance reads it (`%json {...}` for a JSON schema)
    trigger: str = ""       # "" = guided from the first token; else (again) each time the output produces it
    primed: str | None = None   # start inside the grammar with this text consumed (the prompt ended mid-call)


@functools.lru_cache(maxsize=256)   # an agent sends the same tools every turn: validate each grammar once
def grammar_error(grammar: str) -> str | None:
    """Why llguidance rejects `grammar`, or None."""
    import llguidance

    return llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(grammar)) or None


def json_grammar(schema: dict | None) -> str:
    """The Lark grammar of one JSON value under `schema` (None: any JSON object), as llguidance reads it. Whitespace
    is fixed (`{"a": 1, "b": [2, 3]}`): with llguidance's flexible default a small model spends its tokens on
    newlines and tabs between keys (4 of 4 samples of the tiny test model; 2 ran out of tokens), as vLLM's
    `disable_any_whitespace` avoids."""
    schema = dict(schema if schema is not None else {"type": "object"})
    schema.setdefault("x-guidance", {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
    return "start: %json " + json.dumps(schema, ensure_ascii=False)


class GuideFactory:
    """Per engine: the tokenizer's llguidance view (built once: ~0.5 s for 49k tokens) and compiled grammars."""

    def __init__(self, tokenizer, vocab_size: int):
        import llguidance.hf

        self.tokenizer = tokenizer
        self.ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer)
        self.vocab_size = vocab_size
        self._bits = torch.arange(32, dtype=torch.int32)
        self._added = {t.content: i for i, t in tokenizer.added_tokens_decoder.items()}
        self._grammars: dict[str, str] = {}   # grammar text -> llguidance's compiled form

    def start(self, spec: GrammarSpec) -> "Guide":
        return Guide(self, spec)

    def matcher(self, spec: GrammarSpec):
        import llguidance

        grammar = self._grammars.get(spec.grammar)
        if grammar is None:
            grammar = self._grammars[spec.grammar] = llguidance.LLMatcher.grammar_from_lark(
                self.with_added_tokens(spec.grammar))
        return llguidance.LLMatcher(self.ll_tokenizer, grammar)

    def with_added_tokens(self, grammar: str) -> str:
        """A rule that is one literal which the tokenizer holds as an added token (our trained tokenizers add
        `</tool_call>`) also accepts that token: llguidance matches added tokens only by id (`<[id]>`)."""
        def rule(m: re.Match) -> str:
            tid = self._added.get(json.loads(m.group(2)))
            return m.group(0) if tid is None else f"{m.group(1)}: {m.group(2)} | <[{tid}]>"
        return re.sub(r'^(\w+): ("(?:[^"\\]|\\.)*")$', rule, grammar, flags=re.M)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def allowed(self, matcher) -> torch.Tensor:
        """(vocab_size,) bool: the tokens the matcher accepts next."""
        import llguidance.torch as lt

        bm = lt.allocate_token_bitmask(1, self.ll_tokenizer.vocab_size)
        lt.fill_next_token_bitmask(matcher, bm, 0)
        bits = ((bm[0, :, None] >> self._bits) & 1).flatten().bool()  # (32 * words,)
        out = torch.zeros(self.vocab_size, dtype=torch.bool)
        n = min(self.vocab_size, bits.numel())
        out[:n] = bits[:n]
        return out


class Guide:
    """One request's guide state: `allowed()` before sampling (None = unguided), `advance(token, text)` after."""

    def __init__(self, factory: GuideFactory, spec: GrammarSpec):
        self.f, self.spec = factory, spec
        self.matcher = None
        self.scan_from = 0          # where in the output text to look for the next trigger
        self.done = False           # a whole-output grammar (no trigger) reached its end: the output stops there
        if spec.primed is not None or not spec.trigger:
            self._enter(spec.primed or "")

    def _enter(self, text: str) -> None:
        m = self.f.matcher(self.spec)
        if m.is_error():
            raise ValueError(f"tool-call grammar does not compile: {m.get_error()}")
        if text and not m.consume_tokens(self.f.encode(text)):
            return      # the text so far cannot continue the grammar: leave this stretch unguided
        self.matcher = m

    def allowed(self) -> torch.Tensor | None:
        return self.f.allowed(self.matcher) if self.matcher is not None else None

    def advance(self, token_id: int, text: str) -> None:
        """`text`: the whole output text so far, this token included."""
        if self.matcher is not None:
            # accepting = the grammar's end (nothing optional follows it): free text again after it
            if not self.matcher.consume_token(token_id) or self.matcher.is_accepting() or self.matcher.is_stopped():
                self.matcher = None
                self.scan_from = len(text)
                self.done = not self.spec.trigger
            return
        if not self.spec.trigger:
            return
        i = text.find(self.spec.trigger, self.scan_from)
        if i >= 0:
            self.scan_from = len(text)
            self._enter(text[i + len(self.spec.trigger):])
