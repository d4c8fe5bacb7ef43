"""The gateways a user would otherwise pick, installed at pinned versions and run beside meshgate.

`bench/run.py --peer litellm,portkey` measures them on the same mock upstream,
with the same load generator, in the same run as meshgate, so that "faster
than LiteLLM" is a figure from this machine and this minute, not a claim.
Each peer runs with nothing on its side (no auth, no limits, no database):
whatever meshgate does beyond that is work the peer is spared.

Each one lives in its own directory under bench/.peers/ (git-ignored): a venv
for LiteLLM, an npm prefix for Portkey, and a venv for aiperf, the real load
tool of bench/realtool.py. An install is stamped with what it
pinned (`installed.json`) and reused while the pins are unchanged, so only
the first run pays for the download; a file lock keeps two runs from
installing into the same directory at once.

Every peer is started in its own process group and stopped as a group
(SIGTERM, then SIGKILL), with every process its tree had also killed one by
one, so a worker that left the group cannot outlive the benchmark.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.procstat import descendants
from bench.stack import Child, free_ports

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "bench" / ".peers"
PEER_NAMES = ("litellm", "portkey")

# The versions of the side-by-side table. LiteLLM 1.108.7 installs on Python 3.11
# (it asks for >=3.10,<3.15); the newer 1.108.14, 1.109.0, 1.109.3, 1.110.0 and 1.110.2 do
# not: their [proxy] extra pins a litellm-proxy or litellm-proxy-extras release that the
# index does not have (checked 2026-12-01).
LITELLM_VERSION = "1.108.7"
LITELLM_WORKERS = 2
PORTKEY_VERSION = "1.15.2"
# npm resolves a newer @hono/node-server by default, with which Portkey's streaming fails
# ("TypeError: immutable", Portkey-AI/gateway #1389); 1.14.1 streams.
HONO_NODE_SERVER_VERSION = "1.14.1"

# The load tool of bench/realtool.py, kept beside the peers: same kind of pinned install.
AIPERF_VERSION = "0.13.0"

INSTALL_TIMEOUT_S = 1800.0
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0


# ----------------------------------------------------------------- installs ----


@contextlib.contextmanager
def _install_lock(name: str) -> Iterator[None]:
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    with (PEERS_DIR / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _stamp_matches(home: Path, pins: dict[str, Any], entry: Path) -> bool:
    stamp = home / "installed.json"
    if not stamp.is_file() or not entry.exists():
        return False
    try:
        return bool(json.loads(stamp.read_text()) == pins)
    except ValueError:
        return False


def _run(argv: list[str], cwd: Path, log: Path) -> None:
    """One install step, its output kept in `log`; RuntimeError with the log's tail on failure."""
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            code = subprocess.run(
                argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S
            ).returncode
        except subprocess.TimeoutExpired:
            code = -1
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"install step failed ({code}): {' '.join(argv)}\n{tail}")


def ensure_venv(name: str, requirements: list[str], entry: str) -> Path:
    """A venv at bench/.peers/<name>/venv holding `requirements`; reused while the pins match.

    `entry` is the console script whose presence says the install finished. The
    venv is built on this interpreter's base Python, so a peer runs on the same
    Python version as meshgate.
    """
    home = PEERS_DIR / name
    venv = home / "venv"
    python = Path(getattr(sys, "_base_executable", sys.executable))
    pins = {"python": sys.version.split()[0], "requirements": requirements}
    with _install_lock(name):
        if _stamp_matches(home, pins, venv / "bin" / entry):
            return venv
        print(f"installing {name} ({', '.join(requirements)}) into {venv} ...", flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        (home / "installed.json").unlink(missing_ok=True)
        home.mkdir(parents=True, exist_ok=True)
        log = home / "install.log"
        log.write_bytes(b"")
        _run([str(python), "-m", "venv", str(venv)], home, log)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        _run([*pip, "-q", *requirements], home, log)
        (home / "installed.json").write_text(json.dumps(pins, indent=2) + "\n")
    return venv


def ensure_litellm() -> Path:
    """LiteLLM's proxy at the pinned version; returns its venv."""
    return ensure_venv("litellm", [f"litellm[proxy]=={LITELLM_VERSION}"], "litellm")


def ensure_aiperf() -> Path:
    """aiperf (bench/realtool.py's real tool) at the pinned version; returns its venv."""
    return ensure_venv("aiperf", [f"aiperf=={AIPERF_VERSION}"], "aiperf")


def ensure_portkey() -> Path:
    """Portkey's gateway from npm at the pinned version; returns its start-server.js.

    `overrides` is npm's way to pin a transitive dependency: here the one whose
    default resolution breaks Portkey's streaming.
    """
    home = PEERS_DIR / "portkey"
    package = {
        "name": "meshgate-bench-portkey",
        "private": True,
        "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION},
        "overrides": {"@hono/node-server": HONO_NODE_SERVER_VERSION},
    }
    entry = home / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    node_version = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    pins = {"node": node_version, "package": package}
    with _install_lock("portkey"):
        if _stamp_matches(home, pins, entry):
            return entry
        print(f"installing @portkey-ai/gateway@{PORTKEY_VERSION} into {home} ...", flush=True)
        (home / "installed.json").unlink(missing_ok=True)
        shutil.rmtree(home / "node_modules", ignore_errors=True)
        home.mkdir(parents=True, exist_ok=True)
        (home / "package.json").write_text(json.dumps(package, indent=2) + "\n")
        (home / "package-lock.json").unlink(missing_ok=True)
        log = home / "install.log"
        log.write_bytes(b"")
        _run(["npm", "install", "--omit=dev", "--no-audit", "--no-fund"], home, log)
        hono = home / "node_modules" / "@hono" / "node-server" / "package.json"
        got = json.loads(hono.read_text()).get("version")
        if got != HONO_NODE_SERVER_VERSION:
            raise RuntimeError(f"@hono/node-server is {got}, not {HONO_NODE_SERVER_VERSION}")
        (home / "installed.json").write_text(json.dumps(pins, indent=2) + "\n")
    return entry


def installed_versions(name: str) -> dict[str, str]:
    """What is really installed (read back, not the pins), for the result's meta."""
    if name in ("litellm", "aiperf"):
        python = PEERS_DIR / name / "venv" / "bin" / "python"
        code = f"import importlib.metadata as m; print(m.version({name!r}))"
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
        return {name: out.stdout.strip()}
    modules = PEERS_DIR / "portkey" / "node_modules"
    versions: dict[str, str] = {}
    for package in ("@portkey-ai/gateway", "@hono/node-server", "hono"):
        meta = modules / package / "package.json"
        if meta.is_file():
            versions[package] = json.loads(meta.read_text()).get("version", "?")
    return versions


# ---------------------------------------------------------------- processes ----


def peer_env(extra: dict[str, str]) -> dict[str, str]:
    """Our environment without meshgate's variables, the repository's PYTHONPATH or proxies."""
    drop = ("MESHGATE_", "REDIS_URL", "PYTHONPATH", "DATABASE_URL", "LITELLM_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        env.pop(proxy, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def _wait_http(url: str, proc: Child, timeout: float) -> None:
    """Until GET `url` answers below 500; RuntimeError if the peer exits or never answers."""
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise RuntimeError(
        f"{proc.name} did not answer {url} within {timeout:.0f}s ({last})\n{proc.tail()}"
    )


def stop_group(child: Child, timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM the child's process group, then SIGKILL it and any straggler of its tree.

    A worker that moved to a group of its own is still in the tree taken
    before the first signal, so it is killed too.
    """
    proc = child.proc
    # The child itself is reaped by proc.wait() below (psutil would take its exit code).
    tree: list[psutil.Process] = []
    for pid in descendants(proc.pid):
        with contextlib.suppress(psutil.Error):
            tree.append(psutil.Process(pid))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    for process in tree:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _, alive = psutil.wait_procs(tree, timeout=5.0)
    proc.wait()
    if alive:
        raise RuntimeError(f"{child.name}: processes {[p.pid for p in alive]} survived SIGKILL")
    return proc.returncode


@dataclass
class PeerProcess:
    """A running peer: where to send requests, with which headers, and its process tree."""

    name: str
    base_url: str
    key: str
    headers: dict[str, str]
    child: Child
    description: str
    versions: dict[str, str]

    @property
    def pid(self) -> int:
        return self.child.pid

    def processes(self) -> dict[int, str]:
        """Every process of the peer's tree, all labelled with the peer's name."""
        return {pid: self.name for pid in [self.pid, *descendants(self.pid)]}

    def stop(self) -> int:
        return stop_group(self.child)


def litellm_config(mock_url: str, chat_model: str, embed_model: str) -> dict[str, Any]:
    """The smallest proxy config: the bench's two model names routed to the mock, nothing else.

    No master key, no database, no budgets: LiteLLM then authenticates nobody
    and records nothing, which is the peer at its cheapest.
    """
    return {
        "model_list": [
            {
                "model_name": chat_model,
                "litellm_params": {
                    "model": "openai/mock",
                    "api_base": mock_url,
                    "api_key": "sk-mock",
                },
            },
            {
                "model_name": embed_model,
                "litellm_params": {
                    "model": "openai/mock-embed",
                    "api_base": mock_url,
                    "api_key": "sk-mock",
                },
            },
        ],
        "litellm_settings": {"telemetry": False, "set_verbose": False},
        # Since 1.108 the proxy refuses to start without a master key unless told that
        # running with no auth is intended, which is what this comparison wants.
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }


def start_litellm(workdir: Path, mock_url: str, chat_model: str, embed_model: str) -> PeerProcess:
    import yaml

    venv = ensure_litellm()
    config = workdir / "litellm.yaml"
    config.write_text(yaml.safe_dump(litellm_config(mock_url, chat_model, embed_model)))
    (port,) = free_ports(1)
    argv = [
        str(venv / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        str(LITELLM_WORKERS),
        # uvicorn kills a worker that is not serving 5 s after its start; importing the
        # proxy takes longer than that on 2 busy cores, and the workers are then
        # restarted forever.
        "--timeout_worker_healthcheck",
        str(int(READY_TIMEOUT_S)),
    ]
    env = peer_env(
        {
            # The cost map ships in the wheel; fetching it at start-up would wait on the network.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "TMPDIR": str(workdir),
        }
    )
    child = Child(argv, workdir, "litellm", env=env, cwd=workdir)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/health/liveliness", child, READY_TIMEOUT_S)
    except BaseException:
        PeerProcess("litellm", base, "", {}, child, "", {}).stop()
        raise
    return PeerProcess(
        name="litellm",
        base_url=f"{base}/v1",
        key="",
        headers={},
        child=child,
        description=f"LiteLLM proxy {LITELLM_VERSION}, {LITELLM_WORKERS} workers, no key, no database",
        versions=installed_versions("litellm"),
    )


def start_portkey(workdir: Path, mock_url: str) -> PeerProcess:
    entry = ensure_portkey()
    (port,) = free_ports(1)
    # start-server.js has no option for the address: the preload makes it 127.0.0.1.
    loopback = ROOT / "bench" / "loopback.mjs"
    argv = ["node", "--import", loopback.as_uri(), str(entry), f"--port={port}", "--headless"]
    child = Child(argv, workdir, "portkey", env=peer_env({"NODE_ENV": "production"}), cwd=workdir)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/", child, READY_TIMEOUT_S)
    except BaseException:
        PeerProcess("portkey", base, "", {}, child, "", {}).stop()
        raise
    return PeerProcess(
        name="portkey",
        base_url=f"{base}/v1",
        # Forwarded to the mock as it is, like a user's provider key.
        key="sk-mock",
        headers={"x-portkey-provider": "openai", "x-portkey-custom-host": mock_url},
        child=child,
        description=f"Portkey gateway {PORTKEY_VERSION} (one Node process), no auth",
        versions=installed_versions("portkey"),
    )


def start_peer(
    name: str, workdir: Path, mock_url: str, chat_model: str, embed_model: str
) -> PeerProcess:
    """Install (if needed) and start one peer on 127.0.0.1 in front of the mock at `mock_url`."""
    if name == "litellm":
        return start_litellm(workdir, mock_url, chat_model, embed_model)
    if name == "portkey":
        return start_portkey(workdir, mock_url)
    raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEER_NAMES)}")


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.peers install [NAME...]`: install ahead of a run, print the versions."""
    import argparse

    installers = {"litellm": ensure_litellm, "portkey": ensure_portkey, "aiperf": ensure_aiperf}
    parser = argparse.ArgumentParser(prog="python -m bench.peers")
    parser.add_argument("command", choices=["install"])
    parser.add_argument("names", nargs="*", metavar="|".join(installers))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(installers))
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    for name in args.names or list(installers):
        installers[name]()
        print(name, installed_versions(name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
