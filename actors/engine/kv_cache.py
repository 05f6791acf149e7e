"""Block (paged) KV-cache bookkeeping with automatic prefix caching. Pure Python: no tensors here.

The KV tensors are a pool of `num_blocks` blocks of `block_size` token slots (actors/engine/runner.py owns them);
this module decides which request owns which blocks. A request's blocks are its block table, in token order.

Prefix caching (vLLM's "automatic prefix caching"): once a block is full, it is keyed by a hash chained over
every token up to its end (`hash((parent_hash, tokens))`), so equal keys mean equal prefixes. A new request whose
leading full blocks match cached keys reuses those blocks (reference counted) and skips computing them: an agent
resends the same system prompt and tool list every turn. A block whose reference count drops to 0 stays cached in
the free queue; allocation takes the least recently freed block first and only then drops its cached key (LRU
eviction). A request's blocks are freed tail first, so its last blocks, the least likely to be shared, go first.

Block 0 is reserved and never handed out: padded block-table entries point at it (a block of zeros), so an
attention kernel may read it without masking tricks for NaN garbage.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field


@dataclass(eq=False)
class Block:
    id: int
    ref: int = 0
    key: int | None = None            # prefix-chain hash once the block is full and registered
    tokens: tuple[int, ...] = ()      # the block's tokens (a key collision is checked against them)
    parent: int | None = None         # key of the previous block in the chain


@dataclass(eq=False)
class KVSeq:
    """What the block manager keeps per request (the scheduler's `Request` holds one)."""

    blocks: list[Block] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)   # chain keys of the full blocks computed so far
    num_registered: int = 0                           # leading blocks registered in the prefix cache
    root: int | None = None           # the chain's root: a LoRA adapter's key, so no block is shared across adapters


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks (1 is reserved), got {num_blocks}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.blocks[0].ref = 1  # the reserved null block
        # ref == 0 blocks, least recently freed first; cached ones keep their key until reused
        self.free: collections.OrderedDict[int, Block] = collections.OrderedDict(
            (b.id, b) for b in self.blocks[1:])
        self.cached: dict[int, Block] = {}
        self.queries = 0                  # prompt tokens looked up in the prefix cache
        self.hits = 0                     # of them, found

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usable_blocks(self) -> int:
        return self.num_blocks - 1

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache ---------------------------------------------------------------------------------

    def _chain(self, seq: KVSeq, token_ids: list[int], upto_blocks: int) -> list[int]:
        """Keys of the first `upto_blocks` full blocks of `token_ids` (extending the ones already computed)."""
        bs = self.block_size
        for i in range(len(seq.keys), upto_blocks):
            parent = seq.keys[i - 1] if i else seq.root
            seq.keys.append(hash((parent, tuple(token_ids[i * bs:(i + 1) * bs]))))
        return seq.keys[:upto_blocks]

    def _lookup(self, key: int, parent: int | None, tokens: tuple[int, ...]) -> Block | None:
        b = self.cached.get(key)
        if b is not None and b.parent == parent and b.tokens == tokens:
            return b
        return None

    def computed_blocks(self, seq: KVSeq, token_ids: list[int], count: bool = True) -> list[Block]:
        """Cached blocks equal to the request's leading full blocks (no references taken yet). At least the
        last token is always left to compute: its logits give the first sampled token. `count=False` looks
        without adding to the hit statistics (`count_lookup` adds them once the request is admitted)."""
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        full = (len(token_ids) - 1) // bs
        keys = self._chain(seq, token_ids, full)
        hits: list[Block] = []
        for i, key in enumerate(keys):
            b = self._lookup(key, keys[i - 1] if i else seq.root, tuple(token_ids[i * bs:(i + 1) * bs]))
            if b is None:
                break
            hits.append(b)
        if count:
            self.count_lookup(len(token_ids), len(hits))
        return hits

    def count_lookup(self, num_tokens: int, num_hit_blocks: int) -> None:
        self.queries += num_tokens
        self.hits += num_hit_blocks * self.block_size

    # -- allocation -------------------------------------------------------------------------------------

    def can_allocate(self, seq: KVSeq, num_tokens: int, computed: list[Block] = ()) -> bool:
        need = self.blocks_for(num_tokens) - len(seq.blocks) - len(computed)
        revived = sum(1 for b in computed if b.ref == 0)  # cached blocks sitting in the free queue
        return max(need, 0) + revived <= len(self.free)

    def allocate(self, seq: KVSeq, num_tokens: int, computed: list[Block] = ()) -> bool:
        """Make the request's blocks cover `num_tokens` tokens (computed prefix blocks first). False, with
        nothing changed, when the free blocks do not suffice."""
        if not self.can_allocate(seq, num_tokens, computed):
            return False
        for b in computed:
            if b.ref == 0:
                del self.free[b.id]
            b.ref += 1
            seq.blocks.append(b)
        seq.num_registered = max(seq.num_registered, len(seq.blocks))
        for _ in range(self.blocks_for(num_tokens) - len(seq.blocks)):
            _, b = self.free.popitem(last=False)
            if b.key is not None:  # evict: its content is about to be overwritten
                if self.cached.get(b.key) is b:
                    del self.cached[b.key]
                b.key, b.tokens, b.parent = None, (), None
            b.ref = 1
            seq.blocks.append(b)
        return True

    def register(self, seq: KVSeq, token_ids: list[int], num_computed: int) -> None:
        """Put the request's newly completed full blocks into the prefix cache."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = min(num_computed // bs, len(seq.blocks))
        if full <= seq.num_registered:
            return
        keys = self._chain(seq, token_ids, full)
        for i in range(seq.num_registered, full):
            b = seq.blocks[i]
            if keys[i] not in self.cached and b.key is None:
                b.key, b.parent, b.tokens = keys[i], keys[i - 1] if i else seq.root, tuple(token_ids[i * bs:(i + 1) * bs])
                self.cached[b.key] = b
        seq.num_registered = full

    def free_seq(self, seq: KVSeq) -> None:
        for b in reversed(seq.blocks):  # tail first: the first evicted are the least shareable
            b.ref -= 1
            if b.ref == 0:
                self.free[b.id] = b
        seq.blocks.clear()
        seq.num_registered = 0

    def check(self) -> None:
        """Invariants (tests): free blocks have ref 0, owned ones ref > 0, the cache maps keys to their blocks."""
        for b in self.blocks[1:]:
            assert (b.ref == 0) == (b.id in self.free), f"block {b.id}: ref {b.ref}, free {b.id in self.free}"
        for key, b in self.cached.items():
            assert b.key == key, f"cached key {key} points at block {b.id} keyed {b.key}"
