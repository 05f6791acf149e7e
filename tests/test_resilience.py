"""Training that survives: DCP checkpoints (async, atomic, resumable on another layout), a writer killed mid-save,
stop file and SIGTERM, the watchdog (NaN skip / rollback, stalls), a hung collective, elastic resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from actors.common.config import ConfigError, from_dict
from actors.train.checkpoint import latest_in
from actors.train.config import CheckpointConfig, PretrainConfig, ResilienceConfig
from actors.train.resilience import Guardian
from actors.train.trainer import Trainer, run_loop

REPO = Path(__file__).resolve().parent.parent

# a tiny model, 8 fixed batches: a whole run takes well under a second
_SETUP = """
import torch
from actors.model import Transformer, get_config
from actors.train.config import OptimConfig
from actors.train.trainer import CausalLMLoss, Trainer

def make_trainer(steps=8):
    torch.manual_seed(0)
    cfg = get_config("debug", vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2)
    return Trainer(Transformer(cfg), CausalLMLoss(), OptimConfig(lr=3e-3, warmup_steps=2), steps)

_g = torch.Generator().manual_seed(1)
DATA = [torch.randint(0, 300, (4, 17), generator=_g) for _ in range(12)]

def batches(start=0):
    for b in DATA[start:]:
        yield [{"input_ids": b}]
"""
_ns: dict = {}
exec(_SETUP, _ns)
make_trainer, batches = _ns["make_trainer"], _ns["batches"]


def _guardian(stage: Path, trainer: Trainer, ckpt: dict | None = None, res: dict | None = None) -> Guardian:
    return Guardian(stage, from_dict(CheckpointConfig, ckpt or {}), from_dict(ResilienceConfig, res or {}), trainer.d,
                    "fp", {"layout": "single"}, log=lambda s: None)


def _run(trainer: Trainer, g: Guardian, extra=()) -> list[dict]:
    rows: list[dict] = []
    watch, save, stop = g.hooks(lambda t: {"consumed": t.consumed})
    g.start(trainer)
    run_loop(trainer, batches(trainer.consumed), [watch, lambda t, m: rows.append(m), *extra, save, stop],
             on_rollback=g.rollback)
    g.close()
    return rows


def _reference(tmp: Path) -> list[float]:
    tr = make_trainer()
    return [m["loss"] for m in _run(tr, _guardian(tmp / "reference", tr, {"resume": "never"}))]


def test_async_checkpoints_are_atomic_kept_and_resume_bit_for_bit(tmp_path):
    ref = _reference(tmp_path)
    tr = make_trainer()
    g = _guardian(tmp_path, tr, {"every": 2, "keep": 2})
    rows = _run(tr, g)
    assert [m["loss"] for m in rows] == ref  # checkpointing does not change training
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_00000006", "step_00000008"]  # keep 2
    assert (root / "latest").read_text() == "step_00000008"
    saves = [json.loads(line) for line in (root / "checkpoints.jsonl").read_text().splitlines()]
    assert [s["step"] for s in saves] == [2, 4, 6, 8] and all(s["save_ms"] >= s["blocking_ms"] for s in saves)
    meta = json.loads((root / "step_00000006" / "meta.json").read_text())
    assert meta["step"] == 6 and meta["consumed"] == 6 and meta["layout"] == "single"
    # resume from step 6 into a fresh trainer: the loaded tensors are the saved ones, bit for bit, and the last
    # two steps repeat the uninterrupted run's losses exactly
    tr2 = make_trainer()
    g2 = _guardian(tmp_path, tr2, {"resume": str(root / "step_00000006"), "verify_resume": True})
    rest = _run(tr2, g2)
    rep = json.loads((tmp_path / "resume.json").read_text())
    assert rep["equal"] and rep["tensors"] > 10 and rep["differ"] == []
    assert [m["loss"] for m in rest] == ref[6:]
    # a half-written checkpoint (no DCP index, no meta.json) and a `latest` naming a lost folder are never picked
    (root / "step_00000010.tmp").mkdir()
    (root / "latest").write_text("step_00000012")
    assert latest_in(root) == root / "step_00000008"


def test_checkpoints_mirrored_to_a_pyarrow_uri_resume_where_the_local_ones_are_gone(tmp_path):
    """checkpoint.mirror: each complete checkpoint is uploaded (pyarrow.fs; file:// here, s3:// alike), the
    newest `keep` kept there with the mirror's own `latest`; a run whose local checkpoints are lost downloads the
    mirror's latest and repeats the uninterrupted losses."""
    ref = _reference(tmp_path)
    uri = f"file://{tmp_path / 'bucket' / 'run' / 'pretrain' / 'checkpoints'}"
    tr = make_trainer()
    _run(tr, _guardian(tmp_path / "a", tr, {"every": 3, "keep": 2, "mirror": uri}))
    remote = tmp_path / "bucket" / "run" / "pretrain" / "checkpoints"
    assert (remote / "latest").read_text() == "step_00000008"
    assert sorted(p.name for p in remote.iterdir() if p.is_dir()) == ["step_00000006", "step_00000008"]
    assert (remote / "step_00000006" / ".metadata").exists() and (remote / "step_00000006" / "meta.json").exists()
    saves = [json.loads(line) for line in (tmp_path / "a" / "checkpoints" / "checkpoints.jsonl").read_text().splitlines()]
    assert [s["step"] for s in saves if "uploaded_to" in s] == [3, 6, 8]
    import shutil

    shutil.rmtree(tmp_path / "a" / "checkpoints")  # the machine is gone; the mirror is not
    (remote / "latest").write_text("step_00000006")
    tr2 = make_trainer()
    rest = _run(tr2, _guardian(tmp_path / "a", tr2, {"every": 3, "keep": 2, "mirror": uri}))
    assert [m["loss"] for m in rest] == ref[6:]


def test_a_writer_killed_during_a_save_resumes_from_the_previous_checkpoint(tmp_path):
    """kill_writer_at_save=2: the second save SIGKILLs the process after it wrote its first shard file, before
    the index; the next start resumes from the first checkpoint and repeats the uninterrupted losses."""
    script = _SETUP + textwrap.dedent(f"""
        from pathlib import Path
        from actors.common.config import from_dict
        from actors.train.config import CheckpointConfig, ResilienceConfig
        from actors.train.resilience import Guardian
        from actors.train.trainer import run_loop
        tr = make_trainer()
        g = Guardian(Path({str(tmp_path)!r}), from_dict(CheckpointConfig, {{"every": 3, "async_save": False}}),
                     from_dict(ResilienceConfig, {{"fault": {{"kill_writer_at_save": 2}}}}), tr.d, "fp", {{}})
        g.start(tr)
        watch, save, stop = g.hooks(lambda t: {{"consumed": t.consumed}})
        run_loop(tr, batches(tr.consumed), [watch, save, stop])
        print("survived")
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-2000:])
    root = tmp_path / "checkpoints"
    half = root / "step_00000006.tmp"
    assert list(half.glob("*.distcp")) and not (half / ".metadata").exists()  # the shard landed, the index not
    assert latest_in(root) == root / "step_00000003"
    ref = _reference(tmp_path)
    tr = make_trainer()
    g = _guardian(tmp_path, tr, {"every": 3})
    assert g.ckpt.find("auto") == root / "step_00000003"
    assert [m["loss"] for m in _run(tr, g)] == ref[3:]
    assert not half.exists()  # the next save cleared the dead write


def test_nan_step_is_skipped_or_rolled_back_and_stalls_are_reported(tmp_path):
    # skip: step 3's loss is NaN, no update happens there, training goes on with finite losses
    tr = make_trainer()
    before: dict = {}
    snap = lambda t, m: t.step == 2 and before.update({k: v.clone() for k, v in t.model.state_dict().items()})  # noqa: E731
    same: list = []
    check = lambda t, m: t.step == 3 and same.append(all(torch.equal(before[k], v) for k, v in t.model.state_dict().items()))  # noqa: E731
    rows = _run(tr, _guardian(tmp_path / "skip", tr, {"resume": "never"},
                              {"on_nan": "skip", "stall_factor": 10.0, "spike_factor": 3.0,
                               "fault": {"nan_at_step": 3, "spike_at_step": 7, "slow_step": 8, "slow_s": 1.0}}),
                [snap, check])
    assert rows[2]["skipped"] == 1 and same == [True]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for i, m in enumerate(rows) if i != 2)
    # a loss 10x the median of the steps before: skipped as well
    assert rows[6]["skipped"] == 1 and all("skipped" not in m for i, m in enumerate(rows) if i not in (2, 6))
    assert rows[7]["stall"] > 10  # 1 s against steps of a few ms
    events = [json.loads(line) for line in (tmp_path / "skip" / "events.jsonl").read_text().splitlines()]
    bad = [(e["action"], e["step"], e["reason"].split(" ")[0]) for e in events if e["event"] == "bad_step"]
    assert bad == [("skip", 3, "non-finite"), ("skip", 7, "spike")]
    assert ("stall", 8) in [(e["event"], e["step"]) for e in events]
    # rollback: checkpoints every 2 steps; the NaN at step 5 restores step 4's weights and the data goes on past
    # the bad batch, so steps 5.. see batches 6.. (one batch further than an uninterrupted run)
    tr = make_trainer()
    rows = _run(tr, _guardian(tmp_path / "rb", tr, {"every": 2}, {"on_nan": "rollback", "stall_factor": 1e6,
                                                                 "fault": {"nan_at_step": 5}}))
    assert [m["step"] for m in rows] == [1, 2, 3, 4, 5, 6, 7, 8] and tr.consumed == 9
    events = [json.loads(line) for line in (tmp_path / "rb" / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e.get("action")) for e in events] == [("bad_step", "rollback"), ("rollback", None)]
    assert events[-1]["to_step"] == 4 and events[-1]["rejected_step"] == 5
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in rows)
    assert [m["loss"] for m in rows[:4]] == _reference(tmp_path)[:4]


def test_stop_file_checkpoints_and_stops_and_the_rerun_finishes(tmp_path):
    ref = _reference(tmp_path)
    tr = make_trainer()
    g = _guardian(tmp_path, tr, {"every": 100})
    touch = lambda t, m: t.step == 3 and (tmp_path / "STOP").touch()  # noqa: E731
    rows = _run(tr, g, [touch])
    assert [m["step"] for m in rows] == [1, 2, 3] and rows[-1]["stopped_by"].startswith("stop file")
    assert latest_in(tmp_path / "checkpoints").name == "step_00000003" and not (tmp_path / "STOP").exists()
    tr2 = make_trainer()
    assert [m["loss"] for m in rows] + [m["loss"] for m in _run(tr2, _guardian(tmp_path, tr2, {"every": 100}))] == ref


@pytest.mark.parametrize("bad, needle", [
    ({"checkpoint": {"keep": 0}}, "checkpoint.keep"),
    ({"resilience": {"on_nan": "ignore"}}, "resilience.on_nan"),
    ({"resilience": {"stop_file": "a/b"}}, "resilience.stop_file"),
])
def test_bad_resilience_settings_name_the_field(bad, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        from_dict(PretrainConfig, {"model": "debug", "seq_len": 64, "batch_size": 4, **bad})


def test_finetune_old_checkpoint_keys_name_their_replacement():
    from actors.train.config import FinetuneConfig

    with pytest.raises(ConfigError, match=r"replaced by checkpoint\.every"):
        from_dict(FinetuneConfig, {"save_every": 5})


def test_elastic_layout_keeps_the_global_batch():
    from actors.train.config import ParallelConfig
    from actors.train.workers import elastic_layout

    pc = from_dict(ParallelConfig, {"dp_replicate": 2})
    shrunk, accum = elastic_layout(pc, 1, 1, min_workers=1)
    assert (shrunk.dp, shrunk.world_size, accum) == (1, 1, 2)  # 2 ranks x 1 micro-batch = 1 rank x 2
    pc = from_dict(ParallelConfig, {"dp_shard": 4, "tp": 2})
    shrunk, accum = elastic_layout(pc, 4, 1, min_workers=2)
    assert (shrunk.dp_shard, shrunk.tp, accum) == (2, 2, 2)
    with pytest.raises(ValueError, match="resilience.min_workers"):
        elastic_layout(pc, 4, 1, min_workers=0)
    with pytest.raises(ValueError, match="multiple of pp x tp = 2"):
        elastic_layout(pc, 3, 1, min_workers=2)



# ------------------------------------------------------------------------------------------------ on Ray Train


@pytest.fixture(scope="module")
def packed(tmp_path_factory, data_root):
    from bench.parallel_parity import prepare_data

    return prepare_data(tmp_path_factory.mktemp("packed"), 64, 12 * 8, 8)


def _pretrain_cfg(steps: int, layout: dict, **kw) -> PretrainConfig:
    world = 1
    for k in ("pp", "dp_replicate", "dp_shard", "tp"):
        world *= layout.get(k, 1)
    dp = layout.get("dp_replicate", 1) * layout.get("dp_shard", 1)
    return from_dict(PretrainConfig, {
        "model": "debug", "seq_len": 64, "batch_size": 8 // dp, "max_steps": steps, "eval_every": steps,
        "eval_max_batches": 1, "log_every": 1, "dtype": "float32",
        "parallel": {**layout, "cpus_per_worker": 2 / world}, **kw})


def _losses(stage: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, open(stage / "metrics.jsonl")) if "loss" in r}


def _events(stage: Path, kind: str) -> list[dict]:
    path = stage / "events.jsonl"
    return [e for e in map(json.loads, open(path)) if e["event"] == kind] if path.exists() else []


def _when(ready, action, timeout: float = 600) -> threading.Thread:
    """Runs `action()` on a thread as soon as `ready()`."""
    def watch():
        t0 = time.time()
        while time.time() - t0 < timeout:
            if ready():
                action()
                return
            time.sleep(0.02)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    return th


@pytest.fixture(scope="module")
def fsdp2_run(ray_session, packed, tmp_path_factory) -> tuple[Path, dict[int, float]]:
    """FSDP2 on 2 workers, 7 steps, checkpoints every 2: the reference of the layout and DeepSpeed tests."""
    from actors.train.stage import run_pretrain

    out = tmp_path_factory.mktemp("fsdp2") / "run"
    run_pretrain(_pretrain_cfg(7, {"dp_shard": 2}, checkpoint={"every": 2, "keep": 4, "export_every": 4}), packed,
                 out)
    return out, _losses(out)


@pytest.mark.ray
def test_checkpoints_resume_across_layouts(fsdp2_run, packed, tmp_path):
    """FSDP2 (2 workers) saves; pp2 x dp2 x tp2 (interleaved 1F1B, 8 workers) resumes from its step 2; one worker
    resumes from the 3D run's step 4. Each load reads exactly the saved tensors (sha256 of the gathered model and
    AdamW state against the checkpoint's), and the resumed steps' losses stay within 1e-3 of the FSDP2 run's."""
    from actors.model import load_hf
    from actors.model.tokenizer import load_tokenizer
    from actors.train.stage import run_pretrain

    src, ref = fsdp2_run
    # export_every: an HF folder of the step-4 weights beside the checkpoints, loadable in transformers
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(src / "exports" / "step_00000004").config.num_hidden_layers == 4
    meta = json.loads((src / "checkpoints" / "step_00000002" / "meta.json").read_text())
    assert meta["world"] == 2 and meta["layout"] == "pp1 x dp_replicate1 x dp_shard2 x tp1"
    three_d = {"pp": 2, "dp_shard": 2, "tp": 2, "pp_schedule": "interleaved_1f1b"}
    res = run_pretrain(_pretrain_cfg(7, three_d, checkpoint={
        "every": 2, "keep": 4, "resume": str(src / "checkpoints" / "step_00000002"), "verify_resume": True}),
        packed, tmp_path / "3d")
    rep = json.loads((tmp_path / "3d" / "resume.json").read_text())
    assert rep["equal"] and rep["step"] == 2 and rep["tensors"] > 10, rep["differ"]
    got = _losses(tmp_path / "3d")
    assert sorted(got) == [3, 4, 5, 6, 7]
    assert max(abs(got[s] - ref[s]) / ref[s] for s in got) <= 1e-3, (got, ref)
    # the final HF export gathers pipeline stages, tensor and FSDP shards: its loss on the held-out rows is the
    # one the 3D run logged
    import pyarrow.parquet as pq

    model = load_hf(res["outputs"]["hf"])
    val = torch.tensor(pq.read_table(packed["val_dir"]).column("input_ids").to_pylist())
    with torch.no_grad():
        logits = model(val)[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), val[:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(res["metrics"]["val_loss"], rel=1e-4)
    assert res["metrics"]["tokens"] == 5 * 8 * 64 and res["metrics"]["world_size"] == 8
    assert load_tokenizer(res["outputs"]["hf"]).chat_template is not None
    assert (tmp_path / "3d" / "loss.png").stat().st_size > 1000

    run_pretrain(_pretrain_cfg(7, {}, checkpoint={"resume": str(tmp_path / "3d" / "checkpoints" / "step_00000004"),
                                                  "verify_resume": True}), packed, tmp_path / "single")
    rep = json.loads((tmp_path / "single" / "resume.json").read_text())
    assert rep["equal"] and rep["step"] == 4 and rep["tensors"] > 30, rep["differ"]
    got = _losses(tmp_path / "single")
    assert sorted(got) == [5, 6, 7] and max(abs(got[s] - ref[s]) / ref[s] for s in got) <= 1e-3, (got, ref)


@pytest.mark.ray
def test_hung_worker_restarts_the_group_and_sigterm_to_worker_and_driver_each_checkpoint(ray_session, packed,
                                                                                         tmp_path):
    """One stage dir, dp2. The last rank never joins step 3's collectives: the other fails after
    collective_timeout_s, Ray Train restarts the group (max_failures=1) and it resumes from the step-2 checkpoint.
    SIGTERM to a worker then checkpoints and stops the run cleanly; re-run, SIGTERM to the driver does the same
    (through the stop file). Each resume starts at its checkpoint."""
    from actors.train.stage import TrainingStopped, run_pretrain
    from bench.chaos import train_workers

    stage = tmp_path / "run"
    cfg = _pretrain_cfg(12, {"dp_replicate": 2}, checkpoint={"every": 2},
                        resilience={"max_failures": 1, "collective_timeout_s": 5, "fault": {"hang_at_step": 3}})
    # each SIGTERM as soon as an attempt has resumed: the rest of the run is the window for the stop
    th = _when(lambda: len(_events(stage, "resume")) == 1, lambda: os.kill(train_workers()[-1], signal.SIGTERM))
    with pytest.raises(TrainingStopped, match="stopped at step"):
        run_pretrain(cfg, packed, stage)
    th.join()
    assert (stage / ".faults" / "hang_at_step").exists()  # it did hang, and the group got past it
    stop = _events(stage, "stop")
    assert [e["why"] for e in stop] == ["SIGTERM"] and not (stage / "STOP").exists()
    assert [e["step"] for e in _events(stage, "resume")] == [2]
    assert latest_in(stage / "checkpoints").name == f"step_{stop[0]['step']:08d}"
    assert sorted(_losses(stage)) == list(range(1, stop[0]["step"] + 1))  # every step logged once
    # SIGTERM to the driver asks the workers through the stop file: the rerun resumes and stops the same way
    _when(lambda: len(_events(stage, "resume")) == 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingStopped):
        run_pretrain(cfg, packed, stage)
    stops = _events(stage, "stop")
    assert stops[1]["why"] == f"stop file {stage / 'STOP'}" and stop[0]["step"] < stops[1]["step"] < 12


_ELASTIC = textwrap.dedent("""
    import json, sys, threading, time
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster
    from actors.common.config import from_dict
    from actors.train.checkpoint import latest_in
    from actors.train.config import PretrainConfig
    from actors.train.stage import run_pretrain

    data, out = json.loads(sys.argv[1]), Path(sys.argv[2])

    def cfg(**kw):
        return from_dict(PretrainConfig, {
            "model": "debug", "seq_len": 64, "batch_size": 4, "max_steps": 10, "eval_every": 10,
            "eval_max_batches": 1, "log_every": 1, "dtype": "float32",
            "parallel": {"dp_replicate": 2, "cpus_per_worker": 1}, **kw})

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    try:
        second = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address)
        ckpts = out / "elastic" / "checkpoints"

        def remove_node():
            while not (ckpts.is_dir() and latest_in(ckpts) is not None):
                time.sleep(0.02)
            cluster.remove_node(second)  # the second node's raylet and its worker are gone

        threading.Thread(target=remove_node, daemon=True).start()
        el = run_pretrain(cfg(checkpoint={"every": 2}, resilience={"max_failures": 1, "min_workers": 1}), data,
                          out / "elastic")["metrics"]
        print("RESULT " + json.dumps(el))
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


@pytest.mark.ray
def test_removing_a_node_resumes_at_a_smaller_data_parallel_size(packed, tmp_path):
    """A simulated 2-node cluster (1 CPU each) in its own process: dp2 with one worker per node; once the first
    checkpoint lands the second node is removed. The elastic group (min_workers=1) restarts on the one node left
    as dp1 with twice the gradient accumulation (the same global batch), resumes from the checkpoint, and ends on
    the loss of an uninterrupted run at that global batch within 1e-3."""
    from cluster.env import local_ray_env

    from conftest import kill_tree

    # Ray Train first asks for the layout's full size and waits this long (default 60 s) before settling for
    # what the cluster has left
    env = {**os.environ, **local_ray_env(), "PYTHONPATH": str(REPO), "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "5"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-c", _ELASTIC, json.dumps(packed), str(tmp_path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        kill_tree(proc.pid)
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, stdout[-3000:] + stderr[-3000:]
    m = json.loads(line[len("RESULT "):])
    assert m["world_size"] == 1 and m["layout"] == "pp1 x dp_replicate1 x dp_shard1 x tp1" and m["step"] == 10
    ref = _one_process_run(packed, 10)
    assert abs(m["loss"] - ref[-1]) <= 1e-3 * ref[-1], (m["loss"], ref)
    resumes = _events(tmp_path / "elastic", "resume")
    assert len(resumes) == 1 and resumes[0]["saved_world"] == 2 and resumes[0]["world"] == 1


def _one_process_run(packed: dict, steps: int) -> list[float]:
    """The uninterrupted run at the same global batch, in this process: the stage's own model init, data order,
    optimizer and loop on one rank (no Ray)."""
    from actors.model import get_config
    from actors.model.tokenizer import load_tokenizer
    from actors.train.data import packed_batches, read_rows
    from actors.train.parallel import Dist, build_model_parts
    from actors.train.trainer import CausalLMLoss
    from actors.train.workers import initial_values

    cfg = _pretrain_cfg(steps, {})
    mcfg = get_config("debug", vocab_size=len(load_tokenizer(packed["tokenizer_dir"])))
    parts = [m for _, m in build_model_parts(mcfg, cfg.parallel, Dist(), torch.float32,
                                             initial_values(mcfg, cfg.seed, None))]
    tr = Trainer(parts, CausalLMLoss(), cfg.optim, steps)
    rows: list[float] = []
    run_loop(tr, packed_batches(read_rows(packed["train_dir"]), cfg.batch_size, 1, 0, 1, cfg.seed),
             [lambda t, m: rows.append(m["loss"])])
    return rows


@pytest.mark.ray
def test_deepspeed_zero2_and_zero3_match_fsdp2_and_zero3_resumes(fsdp2_run, packed, tmp_path):
    """parallel.backend=deepspeed through the same stage, loop and loss: ZeRO-2 and ZeRO-3 give FSDP2's losses
    over 7 steps within 1e-4; ZeRO-3 leaves each of the 2 ranks half the parameters. A ZeRO-3 checkpoint
    (DeepSpeed's own sharded format, behind the same atomic rename and `latest`) resumes into the same last step."""
    from actors.train.stage import run_pretrain

    ref = fsdp2_run[1]
    for stage in (2, 3):
        par = {"dp_shard": 2, "backend": "deepspeed", "zero_stage": stage}
        res = run_pretrain(_pretrain_cfg(7, par, checkpoint={"every": 2, "keep": 4}), packed, tmp_path / f"z{stage}")
        got = _losses(tmp_path / f"z{stage}")
        assert sorted(got) == list(range(1, 8))
        assert max(abs(got[s] - ref[s]) / ref[s] for s in got) <= 1e-4, (stage, got, ref)
    assert res["metrics"]["params_held"] * 2 == res["metrics"]["params_total"]  # ZeRO-3: one shard per rank
    assert res["metrics"]["layout"] == "deepspeed zero3 x dp2"
    ckpt = tmp_path / "z3" / "checkpoints" / "step_00000006"
    assert json.loads((ckpt / "meta.json").read_text())["format"] == "deepspeed"
    run_pretrain(_pretrain_cfg(7, {"dp_shard": 2, "backend": "deepspeed", "zero_stage": 3},
                               checkpoint={"resume": str(ckpt)}), packed, tmp_path / "z3-resumed")
    assert _losses(tmp_path / "z3-resumed") == {7: got[7]}
