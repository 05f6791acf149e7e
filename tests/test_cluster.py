"""cluster/: loopback-only embedded Ray, storage over pyarrow.fs, runtime env for job submission."""
from __future__ import annotations

import pytest

import cluster
from cluster.connect import WORKING_DIR_EXCLUDES


@pytest.mark.ray
def test_embedded_ray_binds_loopback_only(ray_session):
    info = cluster.cluster_info()
    assert info["node_ips"] == ["127.0.0.1"]
    assert info["address"].startswith("127.0.0.1:")
    assert cluster.connect() == cluster.cluster_info()  # idempotent: reuses the running instance


def test_storage_local_and_uri(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("hello")
    for uri in (str(tmp_path / "store"), f"file://{tmp_path}/store2"):
        st = cluster.Storage(uri)
        st.upload(src, "run1/data")
        assert st.exists("run1/data/sub/a.txt")
        back = st.download("run1/data", tmp_path / f"back-{len(uri)}")
        assert (back / "sub" / "a.txt").read_text() == "hello"
    with pytest.raises(ValueError, match="pyarrow.fs URI"):
        cluster.Storage("nosuchscheme://bucket/x")


def test_runtime_env_excludes_local_state():
    renv = cluster.runtime_env(working_dir=".")
    assert renv["working_dir"] == "."
    assert ".venv/" in renv["excludes"] and "runs/" in renv["excludes"]
    assert set(WORKING_DIR_EXCLUDES) <= set(renv["excludes"])


def test_data_root_finds_shared_data():
    root = cluster.data_root()
    assert (root / "tinyshakespeare" / "input.txt").exists()
