"""The runtime file: how `meshgate keys|tenants|usage` find a local `meshgate up`.

`meshgate up` writes one JSON file per running mesh (its pid, its edge and
admin origins, its key store, and its development admin key) and removes it
as it stops. The CLI reads the files of meshes whose process is still alive,
so a `kill -9`'d mesh leaves a stale file that is ignored, then removed.

The files hold an admin secret, so the directory is 0700 and each file 0600:
`$MESHGATE_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/meshgate`, else
`/tmp/meshgate-<uid>`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from meshgate.config import RUNTIME_DIR_ENV

FILE_PREFIX = "up-"


@dataclass(frozen=True, slots=True)
class LocalMesh:
    """One running `meshgate up`, as its runtime file describes it."""

    pid: int
    edge_url: str
    admin_url: str
    admin_key: str
    redis_url: str
    config: str


def directory(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(RUNTIME_DIR_ENV):
        return Path(env[RUNTIME_DIR_ENV])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "meshgate"
    return Path(tempfile.gettempdir()) / f"meshgate-{os.getuid()}"


def write(mesh: LocalMesh, environ: Mapping[str, str] | None = None) -> Path:
    """Publish `mesh`; the file appears whole (written aside, then renamed) and private."""
    folder = directory(environ)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise OSError(f"{folder} must be a directory only you can read (chmod 700)")
    path = folder / f"{FILE_PREFIX}{mesh.pid}.json"
    partial = path.with_suffix(".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(mesh), out)
    partial.replace(path)
    return path


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _alive(pid: int) -> bool:
    """The mesh's process still runs (and, where /proc tells, is still meshgate: pids recycle)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return b"meshgate" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: the signal's answer is all there is


def _age(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def running(environ: Mapping[str, str] | None = None) -> list[LocalMesh]:
    """The local meshes whose process is alive, oldest first; stale files are removed."""
    folder = directory(environ)
    found: list[LocalMesh] = []
    for path in sorted(folder.glob(f"{FILE_PREFIX}*.json"), key=_age):
        try:
            mesh = LocalMesh(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if _alive(mesh.pid):
            found.append(mesh)
        else:
            remove(path)
    return found
