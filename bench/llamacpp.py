"""llama.cpp's own server as the CPU serving baseline (bench/serve.py --baseline llamacpp).

- `ensure_venv`: llama.cpp comes from the `xllamacpp` wheel (its server, continuous batching) in a venv of its own
  under runs/bench/, created once and reused: it is never a dependency of ours.
- `convert_gguf`: the registry's Q4_1 GGUF rewritten with `gguf`'s own numpy kernels: every tensor dequantized to
  F32 (the same weights our fp32 engine serves), or the 2-D ones then quantized to Q8_0 (llama.cpp's int8 format,
  blocks of 32 with one fp16 scale), 1-D norms kept F32 as llama.cpp's own quantize does.
- `LlamaServer`: llama-server in a subprocess of that venv, on 127.0.0.1, `n_parallel` slots with continuous
  batching and `threads` threads for both generation and prompt batches.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

XLLAMACPP = "xllamacpp==2026.10.11549"

_SERVER = r"""
import json, signal, sys, threading
import xllamacpp as xlc
a = json.loads(sys.argv[1])
p = xlc.CommonParams()
p.model.path = a["model"]
p.n_parallel = a["parallel"]
p.n_ctx = a["ctx"]
p.n_batch = a["batch"]
p.n_ubatch = a["batch"]
p.cont_batching = True
p.cpuparams.n_threads = a["threads"]
p.cpuparams_batch.n_threads = a["threads"]
p.hostnames = ["127.0.0.1"]
p.port = a["port"]
p.warmup = True
p.endpoint_metrics = True
server = xlc.Server(p)
print("LISTENING", server.listening_address, flush=True)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
done.wait()
"""


def ensure_venv(root: Path) -> Path:
    """The python of runs/bench/llamacpp-venv with xllamacpp installed (made on first use)."""
    venv = root / "llamacpp-venv"
    py = venv / "bin" / "python"
    marker = venv / ".installed"
    if not marker.exists() or marker.read_text().strip() != XLLAMACPP:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", XLLAMACPP], check=True)
        marker.write_text(XLLAMACPP)
    return py


def convert_gguf(src: Path, out: Path, qtype: str) -> Path:
    """`src` with every tensor as F32 (`qtype` "F32"), or the 2-D ones as Q8_0 ("Q8_0") or BF16 ("BF16") and the
    norms F32, as llama.cpp's own converter writes them; skipped when `out` already exists."""
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    if out.exists():
        return out
    target = {"F32": T.F32, "Q8_0": T.Q8_0, "BF16": T.BF16}[qtype]
    reader = gguf.GGUFReader(str(src))
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    tmp = out.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch=arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = {"F32": 0, "Q8_0": 7, "BF16": 32}[qtype]   # llama_ftype: ALL_F32, MOSTLY_Q8_0, MOSTLY_BF16
        writer.add_key_value(field.name, value, val_type, sub_type=sub_type)
    for t in reader.tensors:
        data = quants.dequantize(t.data, t.tensor_type).astype(np.float32)   # (.., rows, cols) numpy order
        if target != T.F32 and data.ndim == 2 and data.shape[-1] % 32 == 0:
            writer.add_tensor(t.name, quants.quantize(data, target), raw_dtype=target)  # byte shape in, logical out
        else:
            writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(out)
    return out


class LlamaServer:
    def __init__(self, python: Path, model: Path, port: int, threads: int, parallel: int, ctx_per_slot: int,
                 batch: int = 2048, log: Path | None = None):
        self.python, self.port = python, port
        self.log = log or Path(model).with_suffix(".server.log")
        self.args = {"model": str(model), "port": port, "threads": threads, "parallel": parallel,
                     "ctx": parallel * ctx_per_slot, "batch": batch}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LlamaServer":
        env = {**os.environ, "OMP_NUM_THREADS": str(self.args["threads"])}
        # its log goes to a file: a pipe nobody reads fills up (64 KiB) and blocks the server mid-run
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen([str(self.python), "-c", _SERVER, json.dumps(self.args)], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("llama.cpp server did not become healthy in 300 s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
