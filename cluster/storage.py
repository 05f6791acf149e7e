"""Storage root for datasets and checkpoints: a local path by default, any pyarrow.fs URI accepted."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cluster.env import REPO_ROOT, settings


def data_root() -> Path:
    """Where the shared public data lies (FULLCHAIN_DATA_ROOT, else ../shared/data beside the repo)."""
    s = settings()
    candidates = [s.data_root] if s.data_root else []
    candidates += [str(REPO_ROOT.parent / "shared" / "data"), str(Path.cwd().parent / "shared" / "data")]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c).resolve()
    raise FileNotFoundError(
        f"shared data not found (tried {candidates}); set FULLCHAIN_DATA_ROOT to the folder holding "
        "tinyshakespeare/, zh_classical/, ... (for `ray job submit`, start the head with `make head`, "
        "which exports it)")


def storage_root() -> str:
    """Root under which runs live: FULLCHAIN_STORAGE (path or URI), else <repo>/runs."""
    return settings().storage or str(REPO_ROOT / "runs")


def model_cache() -> Path:
    """Where imported base models (registry names, .gguf files) are written once and reused: <storage>/models.
    A remote storage root keeps its imports in the local <repo>/runs/models (imports are local files)."""
    root = storage_root()
    return (Path(root) if "://" not in root else REPO_ROOT / "runs") / "models"


@dataclass
class Storage:
    """A folder on a pyarrow filesystem (local, s3://, gs://, hdfs://...).

    Stages write to a local directory; `upload()` mirrors it to the storage root when that is remote,
    `download()` brings a remote folder to a local cache.
    """

    uri: str

    def __post_init__(self):
        import pyarrow.fs as pafs

        if "://" in self.uri:
            try:
                self.fs, self.path = pafs.FileSystem.from_uri(self.uri)
            except Exception as e:  # noqa: BLE001 - re-raised with the fix
                raise ValueError(f"storage URI {self.uri!r} is not usable: {e}. Use a local path or a "
                                 "pyarrow.fs URI such as s3://bucket/prefix or file:///abs/path") from e
        else:
            self.fs, self.path = pafs.LocalFileSystem(), str(Path(self.uri).resolve())

    @property
    def is_local(self) -> bool:
        import pyarrow.fs as pafs

        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *[p.strip("/") for p in parts]])

    def upload(self, local_dir: str | os.PathLike, rel: str) -> str:
        import pyarrow.fs as pafs

        dest = self.join(rel)
        if self.is_local and Path(dest).resolve() == Path(local_dir).resolve():
            return dest
        self.fs.create_dir(dest, recursive=True)
        pafs.copy_files(str(Path(local_dir).resolve()), dest, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)
        return dest

    def download(self, rel: str, local_dir: str | os.PathLike) -> Path:
        import pyarrow.fs as pafs

        Path(local_dir).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.join(rel), str(Path(local_dir).resolve()), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return Path(local_dir)

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.join(rel)).type != pafs.FileType.NotFound
