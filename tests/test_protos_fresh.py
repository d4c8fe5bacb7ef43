"""The committed stubs in meshgate/v1 are exactly what protoc makes of proto/ today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path)
    fresh = {str(p.relative_to(tmp_path)): p.read_bytes() for p in written}
    committed = {
        str(p.relative_to(ROOT)): p.read_bytes() for p in (ROOT / "meshgate").rglob("*_pb2*")
    }
    assert sorted(fresh) == sorted(committed), (
        "a .proto was added or removed: run scripts/gen_protos.py"
    )
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run `python scripts/gen_protos.py` and commit"


def test_one_service_per_file_in_versioned_package() -> None:
    """buf's STANDARD rules leave this one to us (comments: buf's COMMENTS, tests/test_protos.py)."""
    for proto in (ROOT / "proto").rglob("*.proto"):
        text = proto.read_text()
        package = ".".join(proto.relative_to(ROOT / "proto").parent.parts)
        assert f"package {package};" in text  # the directory mirrors the versioned package
        assert text.count("\nservice ") <= 1, proto.name
