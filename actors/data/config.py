"""Typed config of the data stage (`data:` section of a run config).

Every value is checked in `__post_init__`; an error names the key (`data.filters.min_chars`) and the fix.
Paths in `sources` are relative to the shared data root (cluster.data_root()) unless absolute; globs allowed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from actors.common.config import check
from actors.data.dedup import DedupConfig
from actors.data.pipeline import Resources

Format = Literal["auto", "text", "jsonl", "jsonl.gz", "json", "html", "markdown", "pdf", "parquet"]
Split = Literal["document", "paragraphs", "lines"]
FORMATS = ("auto", "text", "jsonl", "jsonl.gz", "json", "html", "markdown", "pdf", "parquet")
SPLITS = ("document", "paragraphs", "lines")


@dataclass
class SourceConfig:
    """One pretraining source: a file or a glob of files of one format."""

    name: str
    path: str                       # relative to the data root, or absolute; may hold * ? [..] globs
    format: Format = "auto"         # auto: from the extension (.txt .jsonl(.gz) .json .html .md .pdf .parquet)
    text_field: str = "text"        # jsonl / json: the key holding the document text
    split: Split = "document"       # how one file/record becomes documents
    exclude: str = ""               # glob of file names to leave out (e.g. "*__expected.html")

    def __post_init__(self):
        check(bool(self.name.strip()), "data.sources[].name", "must be a non-empty name, e.g. 'c4'")
        check(bool(self.path.strip()), f"data.sources[{self.name}].path",
              "must be a file path or glob relative to the data root, e.g. 'tinyshakespeare/input.txt'")
        check(self.format in FORMATS, f"data.sources[{self.name}].format", f"must be one of {FORMATS}")
        check(self.split in SPLITS, f"data.sources[{self.name}].split", f"must be one of {SPLITS}")
        check(bool(self.text_field), f"data.sources[{self.name}].text_field",
              "must name the JSON key holding the text, e.g. 'text'")


@dataclass
class FilterConfig:
    """Rule filters (Gopher/C4-style heuristics), applied after normalization in this order."""

    min_chars: int = 16               # shorter documents (after normalization) are dropped; low because a
                                      # 16-char classical Chinese couplet is a complete text
    min_alpha_frac: float = 0.5       # letters (incl. CJK ideographs) / non-space chars
    max_symbol_ratio: float = 0.2     # symbols and markup chars (# * / _ { } [ ] @ \\ and Unicode S*) / non-space
    max_dup_line_frac: float = 0.3    # repeated non-empty lines / non-empty lines (boilerplate, spam)
    max_chars: int = 1_000_000        # longer documents are dropped: a 20 MB one-line dump would otherwise be
                                      # most of a small corpus's tokens

    def __post_init__(self):
        check(self.min_chars >= 0, "data.filters.min_chars", f"must be >= 0, got {self.min_chars}")
        check(self.max_chars > self.min_chars, "data.filters.max_chars",
              f"must be > min_chars ({self.min_chars}), got {self.max_chars}")
        for k in ("min_alpha_frac", "max_symbol_ratio", "max_dup_line_frac"):
            v = getattr(self, k)
            check(0.0 <= v <= 1.0, f"data.filters.{k}", f"is a fraction: must be in [0, 1], got {v}")


@dataclass
class SyntheticConfig:
    """Calculator tool-call arithmetic task (actors.data.synthetic)."""

    n_train: int = 2000
    n_heldout: int = 200
    seed: int = 1234
    min_digits: int = 2
    max_digits: int = 4

    def __post_init__(self):
        check(self.n_train >= 0, "data.synthetic.n_train", f"must be >= 0, got {self.n_train}")
        check(self.n_heldout >= 0, "data.synthetic.n_heldout", f"must be >= 0, got {self.n_heldout}")
        check(self.min_digits >= 1, "data.synthetic.min_digits", f"must be >= 1, got {self.min_digits}")
        check(self.max_digits >= self.min_digits, "data.synthetic.max_digits",
              f"must be >= min_digits={self.min_digits}, got {self.max_digits}")


@dataclass
class SFTSourceConfig:
    """An SFT file: Alpaca rows {instruction, input, output[, system, history]} or ShareGPT rows
    {conversations: [{from, value}], tools?} (function_call / observation turns become tool calls / results)."""

    name: str
    path: str
    max_rows: int = 0                 # 0: all rows; otherwise the first max_rows rows of the file
    format: Literal["auto", "alpaca", "sharegpt", "messages"] = "auto"   # auto: detected from the first row

    def __post_init__(self):
        check(bool(self.name.strip()), "data.sft_sources[].name", "must be a non-empty name, e.g. 'alpaca_en'")
        check(bool(self.path.strip()), f"data.sft_sources[{self.name}].path",
              "must be a JSON file relative to the data root, e.g. 'sft_alpaca_demo/alpaca_en_demo.json'")
        check(self.max_rows >= 0, f"data.sft_sources[{self.name}].max_rows", "must be >= 0 (0 = all rows)")
        check(self.format in ("auto", "alpaca", "sharegpt", "messages"), f"data.sft_sources[{self.name}].format",
              f"{self.format!r}: use auto, alpaca, sharegpt or messages")


@dataclass
class ToolMixConfig:
    """Tool-call compositions (actors.data.toolmix) written as the SFT set `toolmix`: conversations per kind,
    composed from the single-call exchanges of the SFT sources named in `from_sources`."""

    from_sources: list[str] = field(default_factory=list)
    api_calls: int = 0            # rule-made single-call exchanges over actors.data.apisynth's functions, added to
                                  # the sources' as material for the kinds below
    simple: int = 0               # api_calls exchanges as rows: one function offered, one call
    multiple: int = 0             # the right tool among 2-4 offered
    parallel: int = 0             # one function called twice in one turn
    parallel_multiple: int = 0    # two functions called in one turn
    irrelevance: int = 0          # only unfitting tools offered: answered without a call
    parallel_arith: int = 0       # 2-3 calculator calls in one turn (held-out expressions excluded)
    chain: int = 0                # compute, then a second call on the result
    python: int = 0               # loops and builtins through the python tool
    retrieval: int = 0            # search_docs over data.docs_sources, the answer citing [doc id]
    code: int = 0                 # the code agent's Python blocks
    react: int = 0                # ReAct's Thought / Action / Observation text
    heldout_python: int = 0       # the agent's held-out questions (synthetic/tools_heldout.jsonl)
    heldout_retrieval: int = 0
    seed: int = 0

    def __post_init__(self):
        for k in ("api_calls", "simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "parallel_arith", "chain", "python",
                  "retrieval", "code", "react", "heldout_python", "heldout_retrieval"):
            check(getattr(self, k) >= 0, f"data.tool_mix.{k}", f"must be >= 0 conversations, got {getattr(self, k)}")
        check(self.simple <= self.api_calls, "data.tool_mix.simple",
              f"simple rows are drawn from the api_calls exchanges: set api_calls >= {self.simple}")
        check(isinstance(self.from_sources, list), "data.tool_mix.from_sources",
              "must list names of data.sft_sources, e.g. [glaive_en]")


def default_sources() -> list[SourceConfig]:
    """The shared public corpus: English (Shakespeare, C4, Wikipedia, HTML, Markdown) + classical Chinese."""
    return [
        # one 1.1 MB file of plays: a paragraph (one speech) is the natural document
        SourceConfig("tinyshakespeare", "tinyshakespeare/input.txt", "text", split="paragraphs"),
        SourceConfig("zh_classical", "zh_classical/zh_classical.jsonl.gz", "jsonl.gz", text_field="text"),
        SourceConfig("c4_demo", "pretrain_demo_llamafactory/c4_demo.jsonl", "jsonl", text_field="text"),
        # 30 lines, each one whole Wikipedia article
        SourceConfig("wiki_demo", "pretrain_demo_llamafactory/wiki_demo.txt", "text", split="lines"),
        # raw pages only: the __expected files are reference extractions (test fixtures), not more data
        SourceConfig("html", "doc_extraction/html/*__source.html", "html"),
        SourceConfig("markdown", "doc_extraction/markdown/*.md", "markdown"),
    ]


def default_sft_sources() -> list[SFTSourceConfig]:
    return [SFTSourceConfig("alpaca", "sft_alpaca_demo/alpaca_en_demo.json")]


@dataclass
class StageSpec:
    stage: str
    params: dict[str, Any] = field(default_factory=dict)
    resources: Resources | None = None

    def __post_init__(self):
        check(bool(self.stage), "curate.stages[].stage", "names a stage, e.g. language (actors/data/curate.py)")


def default_stages() -> list[StageSpec]:
    return [StageSpec("normalize"), StageSpec("filters"), StageSpec("language"), StageSpec("pii")]


@dataclass
class CurateConfig:
    inputs: list[SourceConfig] = field(default_factory=list)
    stages: list[StageSpec] = field(default_factory=default_stages)
    files_per_shard: int = 16
    shard_mb: float = 64.0           # a shard also closes at this much input, so one big file is not one
                                     # worker's whole job while small files share shards
    extract_timeout_s: float = 30.0
    executor: str = "ray"            # ray | local
    dedup: DedupConfig = field(default_factory=DedupConfig)   # exact and MinHash near-dedup over all shards

    def __post_init__(self):
        check(bool(self.inputs), "curate.inputs", "needs at least one input, e.g. [{name: web, path: 'docs/*'}]")
        check(self.files_per_shard >= 1, "curate.files_per_shard", f"must be >= 1, got {self.files_per_shard}")
        check(self.shard_mb > 0, "curate.shard_mb", f"must be > 0 (MB of input per shard), got {self.shard_mb}")
        check(self.extract_timeout_s > 0, "curate.extract_timeout_s", "must be > 0 seconds, e.g. 30")
        check(self.executor in ("ray", "local"), "curate.executor", f"{self.executor!r}: use ray or local")
        names = [s.stage for s in self.stages]
        check(len(set(names)) == len(names), "curate.stages", f"a stage appears twice: {names}")



@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=default_sources)
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: bool = True                      # exact dedup of normalized text, global across all sources
    # per HTML/PDF document: the extractor runs in a child process that is killed past this (quarantined as
    # extract_timeout); a news page takes ~50 ms in trafilatura
    extract_timeout_s: float = 30.0
    vocab_size: int = 4096
    # "" trains a BPE tokenizer of vocab_size on the corpus; a model (registry name, HF folder or .gguf) takes
    # that model's tokenizer instead, as continued pretraining of that model needs
    tokenizer: str = ""
    tokenizer_sample_bytes: int = 8_000_000  # UTF-8 bytes of kept train text the tokenizer is trained on
    tokenizer_min_frequency: int = 2
    seq_len: int = 256
    val_fraction: float = 0.02              # documents (by content hash) held out as the val shard
    rows_per_shard: int = 1024              # packed rows per parquet file: several shards let pretrain
                                            # mix sources by shuffling shard order (no all-to-all shuffle)
    pack_batch_docs: int = 2048             # documents packed together; each batch loses < seq_len tail tokens
    seed: int = 0
    # Parallel Ray Data tasks per step. Each new worker process pays ~2 s of imports (pyarrow, transformers),
    # so on a 2-core box more workers cost more than they save; raise it on a real cluster.
    num_workers: int = 2
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    sft_sources: list[SFTSourceConfig] = field(default_factory=default_sft_sources)
    tool_mix: ToolMixConfig | None = None
    # kept documents of these sources go to docs/docs.parquet (doc_id, source, text): what a retrieval index is
    # built over (python -m jobs.index, or the agent stage's search_docs) and what retrieval rows quote
    docs_sources: list[str] = field(default_factory=list)
    # A curation run instead of the pretraining corpus (configs/data-web.yaml): inputs -> curated Parquet
    # documents + data card under <run>/data/curated. decontam_tasks: eval tasks (names as in eval.tasks) whose
    # rows no kept document may share a 13-gram with; the job driver hands their rows to the decontam stage.
    curate: CurateConfig | None = None
    decontam_tasks: list[str] = field(default_factory=list)
    # With `curate`: the curated documents then become the pretraining corpus as `sources` do without it
    # (tokenizer, packed train/val shards, the SFT and synthetic sets), so a `pretrain` stage can follow.
    pack: bool = False

    def __post_init__(self):
        check(len(self.sources) > 0, "data.sources", "needs at least one source (see default_sources())")
        names = [s.name for s in self.sources]
        check(len(set(names)) == len(names), "data.sources", f"source names must be unique, got {names}")
        if self.tool_mix:
            sft_names = [s.name for s in self.sft_sources]
            for n in self.tool_mix.from_sources:
                check(n in sft_names, "data.tool_mix.from_sources", f"{n!r} is not a data.sft_sources name {sft_names}")
            check("toolmix" not in sft_names, "data.sft_sources", "'toolmix' is the tool mix's own set: rename it")
            check(not (self.tool_mix.retrieval or self.tool_mix.heldout_retrieval) or bool(self.docs_sources),
                  "data.docs_sources", "tool_mix.retrieval rows quote documents: name the sources, e.g. [wiki_demo]")
        for n in self.docs_sources:
            check(n in names, "data.docs_sources", f"{n!r} is not a data.sources name {names}")
        check(self.vocab_size >= 300, "data.vocab_size",
              f"must be >= 300 (256 byte symbols + special tokens + merges), got {self.vocab_size}")
        check(self.tokenizer_sample_bytes > 0, "data.tokenizer_sample_bytes",
              f"must be > 0, e.g. 8000000, got {self.tokenizer_sample_bytes}")
        check(self.tokenizer_min_frequency >= 1, "data.tokenizer_min_frequency", "must be >= 1")
        if self.tokenizer:
            from actors.model.registry import spec_problem

            why = spec_problem(self.tokenizer)
            check(why is None, "data.tokenizer", f"{why}; use '' (train one on the corpus), a registry name "
                                                 "(python -m jobs.models list), a .gguf file or an HF folder")
        check(self.seq_len >= 2, "data.seq_len", f"must be >= 2 (next-token pairs), got {self.seq_len}")
        check(0.0 <= self.val_fraction < 1.0, "data.val_fraction",
              f"must be in [0, 1), e.g. 0.02, got {self.val_fraction}")
        check(self.rows_per_shard > 0, "data.rows_per_shard", f"must be > 0, got {self.rows_per_shard}")
        check(self.num_workers >= 1, "data.num_workers", f"must be >= 1, got {self.num_workers}")
        check(self.extract_timeout_s > 0, "data.extract_timeout_s",
              f"must be > 0 seconds, e.g. 30, got {self.extract_timeout_s}")
        check(self.pack_batch_docs > 0, "data.pack_batch_docs", f"must be > 0, got {self.pack_batch_docs}")
        check(not self.pack or self.curate is not None, "data.pack",
              "packs the curated documents, so it needs a data.curate section; without one the sources are "
              "always packed: remove data.pack")
        sft_names = [s.name for s in self.sft_sources]
        check(len(set(sft_names)) == len(sft_names), "data.sft_sources",
              f"names must be unique (they name the output files), got {sft_names}")
