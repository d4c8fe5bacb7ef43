"""Regenerate meshgate/v1/*_pb2*.py from proto/meshgate/v1/*.proto.

The stubs are committed so that an install needs no build step;
tests/test_protos_fresh.py regenerates them into a temporary folder and fails
when the committed copies differ. Run `python scripts/gen_protos.py` after
editing a .proto file; scripts/test.sh then runs `buf lint` and `buf breaking`
against proto/buf.baseline.binpb (buf.yaml says when and how to refresh it).
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every meshgate proto into out_dir; return the files written."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_dir / "meshgate").rglob("*_pb2*"))


if __name__ == "__main__":
    written = generate(ROOT)
    sys.stdout.write("".join(f"wrote {p.relative_to(ROOT)}\n" for p in written))
