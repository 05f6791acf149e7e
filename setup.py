"""Build hook: generate the gRPC code from actors/serve/proto/fullchain.proto with grpcio-tools (at build time, for
wheels and editable installs alike; actors/serve/grpc_api.py regenerates it in a checkout whose .proto is newer)."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO = Path("actors/serve/proto/fullchain.proto")


class build_py_with_grpc(build_py):
    def run(self):
        from grpc_tools import protoc

        rc = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={ROOT}", f"--grpc_python_out={ROOT}",
                          str(PROTO)])
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {PROTO} (exit {rc})")
        super().run()


setup(cmdclass={"build_py": build_py_with_grpc})
