"""Parallel pretraining: layouts agree with one worker, TP groups stay on a node, big shapes build sharded,
bad layouts fail before any worker starts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from actors.common.config import ConfigError, from_dict
from actors.train.config import ParallelConfig, PretrainConfig
from actors.train.parallel import rank_order, stage_layers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rank_order_puts_each_tp_group_on_one_node():
    # Ray may hand out ranks alternating between nodes; the mesh is built over ranks grouped by node
    nodes = ["a", "b", "a", "b", "a", "b", "a", "b"]
    order = rank_order(nodes)
    groups = [order[i:i + 2] for i in range(0, 8, 2)]  # tp = 2: consecutive mesh positions
    assert all(len({nodes[r] for r in g}) == 1 for g in groups)
    assert sorted(order) == list(range(8))


def test_stage_layers_cover_every_layer_once():
    for L, S in ((4, 2), (4, 4), (30, 4), (22, 3)):
        ranges = stage_layers(L, S)
        assert [i for r in ranges for i in r] == list(range(L))
        assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


@pytest.mark.parametrize("parallel, needle", [
    ({"tp": 3}, "pretrain.parallel.tp"),                        # debug: 4 heads, 2 KV heads
    ({"pp": 4, "stages_per_rank": 2, "pp_schedule": "interleaved_1f1b"}, "pretrain.parallel.pp"),  # 8 > 4 layers
    ({"pp": 2, "pp_microbatches": 3}, "pretrain.parallel.pp_microbatches"),
    ({"pp_schedule": "zb"}, "parallel.pp_schedule"),
    ({"dp": 2}, "parallel.dp"),                                 # the old key names its replacements
    ({"activation_checkpointing": "some"}, "parallel.activation_checkpointing"),
])
def test_bad_layouts_name_the_field(parallel, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        from_dict(PretrainConfig, {"model": "debug", "seq_len": 64, "batch_size": 4, "parallel": parallel})


def test_layout_bigger_than_the_cluster_fails_before_workers_start():
    from actors.train.stage import check_cluster

    two_cores = {"CPU": 2.0}  # what ray.cluster_resources() reports for a 2-CPU cluster
    p = from_dict(ParallelConfig, {"pp": 2, "dp_shard": 2, "tp": 2})  # 8 workers x 1 CPU
    with pytest.raises(ValueError, match=r"needs 8 workers x 1 CPU = 8 CPUs; the cluster has 2 CPUs: set "
                                         r"parallel\.cpus_per_worker <= 0\.25"):
        check_cluster(p, two_cores)
    check_cluster(from_dict(ParallelConfig, {"pp": 2, "dp_shard": 2, "tp": 2, "cpus_per_worker": 0.25}), two_cores)
    with pytest.raises(ValueError, match="needs 2 GPUs; the cluster has 0"):
        check_cluster(from_dict(ParallelConfig, {"dp_shard": 2, "use_gpu": True}), two_cores)


@pytest.mark.ray
def test_1b_shape_builds_on_meta_and_materialises_sharded(ray_session, tmp_path):
    """The 1b shape (1.1B parameters, 4.4 GB in fp32) built on the meta device and materialised over 2 FSDP
    workers: each holds half, and its shard of a weight is exactly that slice of the full seeded init."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def layout_probe_worker(config: dict) -> None:
        """Build `config["model"]` for `config["parallel"]` the way pretraining does (meta device -> stages ->
        parallelize -> materialise this rank's shards) and report what rank 0 holds: local and total parameters,
        and whether its shard of `config["check_param"]` equals that slice of the full seeded init. (Defined in
        the test, so Ray pickles it by value.)"""
        import tempfile

        from torch.distributed.tensor import DTensor, distribute_tensor

        from actors.model import get_config
        from actors.train.parallel import _local, build_model_parts, canonical_name, init_value
        from actors.train.workers import _report, setup_dist

        pc = from_dict(ParallelConfig, config["parallel"])
        d = setup_dist(pc)
        mcfg = get_config(config["model"], **config.get("model_overrides", {}))
        stages = build_model_parts(mcfg, pc, d, torch.float32, lambda n, s: init_value(mcfg, n, s, 0))
        local = sum(_local(p).numel() for _, m in stages for p in m.parameters())
        check, match = config.get("check_param"), None
        for _, m in stages:
            for name, p in m.named_parameters():
                if canonical_name(name) == check:
                    full = init_value(mcfg, check, p.shape, 0)
                    want = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local() \
                        if isinstance(p, DTensor) else full
                    match = bool(torch.equal(_local(p), want))
        report = {"local_params": local, "total_params": mcfg.num_params(), "world_size": d.world,
                  "check_param_matches": match,
                  "on_meta": any(_local(p).is_meta for _, m in stages for p in m.parameters())}
        with tempfile.TemporaryDirectory() as tmp:  # Ray Train keeps the metrics that come with a checkpoint
            if d.rank == 0:
                with open(os.path.join(tmp, "layout_probe.json"), "w") as f:
                    json.dump(report, f)
            _report(report, tmp if d.rank == 0 else None)

    cfg = {"model": "1b", "parallel": {"dp_shard": 2}, "check_param": "model.layers.3.self_attn.q_proj.weight"}
    res = TorchTrainer(layout_probe_worker, train_loop_config=cfg,
                       scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                       torch_config=TorchConfig(backend="gloo"),
                       run_config=RunConfig(name="shard1b", storage_path=str(tmp_path))).fit()
    m = res.metrics
    assert m["check_param_matches"] is True and not m["on_meta"]
    assert m["world_size"] == 2 and m["total_params"] > 1.0e9
    assert m["local_params"] == pytest.approx(m["total_params"] / 2, rel=0.01)  # each rank holds half


_PLACEMENT = textwrap.dedent("""
    import json, ray
    from ray.cluster_utils import Cluster
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from actors.train.stage import _scaling
    from actors.train.config import ParallelConfig
    from actors.common.config import from_dict

    def worker(config):
        import ray.train, torch.distributed as dist
        from actors.train.workers import setup_dist
        d = setup_dist(from_dict(ParallelConfig, config))
        mine = [d.nodes[r] for r in d.mesh["tp"].mesh.tolist()]
        groups = [None] * dist.get_world_size()
        dist.all_gather_object(groups, mine)
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:  # metrics are kept with a checkpoint
            ckpt = ray.train.Checkpoint.from_directory(tmp) if d.rank == 0 else None
            ray.train.report({"tp_groups": groups, "nodes": d.nodes}, checkpoint=ckpt)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1"})
    try:
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address)
        layout = {"dp_replicate": 2, "tp": 2, "cpus_per_worker": 1}
        res = TorchTrainer(worker, train_loop_config=layout,
                           scaling_config=_scaling(from_dict(ParallelConfig, layout)),
                           torch_config=TorchConfig(backend="gloo"),
                           run_config=RunConfig(name="placement", storage_path=__import__("sys").argv[1])).fit()
        print("RESULT " + json.dumps(res.metrics))
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


@pytest.mark.ray
def test_tp_group_is_placed_on_one_node_of_a_two_node_cluster(tmp_path):
    """A simulated 2-node cluster (2 raylets, 2 CPUs each) in its own process: 4 workers of tp2 x dp2, and every
    tensor-parallel group's two ranks share a node."""
    from cluster.env import local_ray_env

    from conftest import kill_tree

    env = {**os.environ, **local_ray_env(), "PYTHONPATH": REPO}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-c", _PLACEMENT, str(tmp_path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:  # timed out or interrupted: the script, its two raylets, GCS and workers go by pid
        kill_tree(proc.pid)
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, stdout[-3000:] + stderr[-3000:]
    m = json.loads(line[len("RESULT "):])
    assert len(set(m["nodes"])) == 2  # the workers really span both nodes
    assert all(len(set(g)) == 1 for g in m["tp_groups"]), m


def test_document_mask_scores_each_packed_document_as_if_alone():
    """A row packed from three documents with the document mask gives the same summed loss (and logits) as the
    three documents in rows of their own."""
    from actors.model import Transformer, get_config
    from actors.train.data import document_mask
    from tests.helpers import token_loss_sum

    torch.manual_seed(0)
    model = Transformer(get_config("debug", vocab_size=300, hidden_size=64, intermediate_size=96)).eval()
    eos = 0
    docs = [torch.randint(1, 300, (n,)).tolist() + [eos] for n in (6, 11, 4)]
    packed = torch.tensor([sum(docs, [])])
    with torch.no_grad():
        logits = model(packed, **document_mask(packed, eos))
        alone = [model(torch.tensor([d])) for d in docs]
        torch.testing.assert_close(logits, torch.cat(alone, dim=1), atol=1e-5, rtol=1e-5)
        # the packed loss also scores the first token of the next document from the previous EOS
        within = sum(float(token_loss_sum(a, torch.tensor([d]))) for a, d in zip(alone, docs))
        boundary = sum(float(torch.nn.functional.cross_entropy(logits[0, i], packed[0, i + 1], reduction="sum"))
                       for i in (6, 18))
    assert float(token_loss_sum(logits, packed)) == pytest.approx(within + boundary, rel=1e-5)


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_activation_checkpointing_keeps_loss_and_grads(mode):
    """Recomputing layers (full) or their pointwise ops (selective) in backward changes memory, not results; the
    wrapped layers keep their checkpoint names."""
    from actors.model import Transformer, get_config
    from actors.train.parallel import apply_ac, canonical_name
    from actors.train.trainer import CausalLMLoss

    cfg = get_config("debug", vocab_size=300, hidden_size=64, intermediate_size=96)
    x = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    grads = {}
    for m in ("none", mode):
        torch.manual_seed(0)
        model = Transformer(cfg)
        apply_ac(model, m)
        loss, n = CausalLMLoss()(model, {"input_ids": x})
        (loss / n).backward()
        grads[m] = {canonical_name(k): p.grad.clone() for k, p in model.named_parameters()}
        if m != "none":
            assert any("_checkpoint_wrapped_module" in k for k, _ in model.named_parameters())
    assert grads["none"].keys() == grads[mode].keys()
    for k, g in grads["none"].items():
        torch.testing.assert_close(grads[mode][k], g, atol=1e-6, rtol=1e-5)
