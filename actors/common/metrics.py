"""Metrics for long work: JSONL lines + TensorBoard scalars + PNG curves."""
from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsWriter:
    """Append-only JSONL (one dict per line) mirrored to TensorBoard scalars."""

    def __init__(self, out_dir: str | Path, name: str = "metrics", tensorboard: bool = True):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{name}.jsonl"
        self._f = open(self.path, "a")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tb"))
            except Exception:  # noqa: BLE001 - TensorBoard is optional at run time
                self._tb = None

    def log(self, row: dict, step: int | None = None) -> None:
        row = {"time": round(time.time(), 3), **row}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            s = step if step is not None else row.get("step", 0)
            for k, v in row.items():
                if k not in ("time", "step") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, s)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    """The first `limit` (default all) non-blank lines of a JSONL file, parsed."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
                if limit is not None and len(rows) >= limit:
                    break
    return rows


def truncate_metrics(path: str | Path, step: int) -> None:
    """Keep only the rows of steps <= `step` (a run resumed from that step logs the later ones again). In place:
    a MetricsWriter holding the file open (append mode) goes on writing at its new end."""
    path = Path(path)
    if not path.exists():
        return
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def plot_curves(rows: list[dict], x: str, ys: list[str], out_png: str | Path, title: str = "",
                hlines: dict[str, float] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for y in ys:
        pts = [(r[x], r[y]) for r in rows if x in r and r.get(y) is not None]
        if pts:
            ax.plot(*zip(*pts), label=y, marker="o" if len(pts) < 20 else None)
    for label, v in (hlines or {}).items():
        ax.axhline(v, linestyle="--", color="gray")
        ax.text(ax.get_xlim()[0], v, f" {label}", va="bottom", fontsize=8, color="gray")
    ax.set_xlabel(x)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
