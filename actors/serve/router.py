"""Prefix-aware routing across engine replicas: a request goes to the replica that served its prompt's opening
tokens before, where its KV blocks are still in the prefix cache.

Rendezvous hashing of the first `tokens` prompt token ids over the live replicas' ids (no shared state: every
ingress replica picks the same replica, and a replica that leaves moves only its own prompts). The chosen replica is
skipped when it is full (`max_ongoing_requests`) or, by the router's cached queue lengths, `imbalance` requests
busier than the least busy one; then the next in the hash order. Requests without prompt ids (control calls such
as `stats`) go by power of two choices.
"""
from __future__ import annotations

import hashlib
import random
from array import array

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica


def prefix_key(ids, tokens: int) -> bytes:
    return hashlib.blake2b(array("q", list(ids[:tokens])).tobytes(), digest_size=16).digest()


def rank_replicas(key: bytes, replica_ids: list[str]) -> list[int]:
    """Indices of `replica_ids` by rendezvous (highest random weight) order for `key`."""
    weight = [hashlib.blake2b(key + rid.encode(), digest_size=8).digest() for rid in replica_ids]
    return sorted(range(len(replica_ids)), key=lambda i: weight[i], reverse=True)


class PrefixRouter(FIFOMixin, RequestRouter):
    """FIFOMixin hands a chosen replica to the oldest pending request; the match below gives it to the request
    it was chosen for first (Ray 2.60's RequestRouter alone left concurrent requests unrouted: 3 at once hung)."""

    def initialize_state(self, tokens: int = 256, imbalance: int = 8, **kwargs):
        self.tokens, self.imbalance = tokens, imbalance

    def _get_pending_request_matching_metadata(self, request_metadata=None):
        exact = self._get_pending_request_matching_internal_request_id(request_metadata)
        return exact if exact is not None else super()._get_pending_request_matching_metadata(request_metadata)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        ids = pending_request.args[0] if pending_request is not None and pending_request.args else None
        if not candidate_replicas:
            return []
        if not isinstance(ids, list) or not ids or len(candidate_replicas) == 1:
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        order = [candidate_replicas[i] for i in rank_replicas(
            prefix_key(ids, self.tokens), [r.replica_id.unique_id for r in candidate_replicas])]
        lens = {r.replica_id: self._replica_queue_len_cache.get(r.replica_id) for r in order}
        known = [n for n in lens.values() if n is not None]
        if known and lens[order[0].replica_id] is not None and \
                lens[order[0].replica_id] - min(known) > self.imbalance:
            order.sort(key=lambda r: lens[r.replica_id] if lens[r.replica_id] is not None else 0)
        return [[r] for r in order]
