"""One preloaded parent that forks the Python services of `meshgate up`.

Every service imports much the same 40-50 MB of Python: grpc, protobuf and the
generated stubs, pydantic and the config schema, starlette, redis-py, and the
tokenizer's tables. Started with exec, each process builds and keeps its own
copy. Forked from one parent that imported them once, the processes share
those pages until one of them writes to a page (copy-on-write). With the
objects frozen out of the cyclic collector's reach (`gc.freeze`), most pages
stay shared: the idle mesh's Pss fell by about 190 MB when this was measured,
and the validation service and the reference engine share one tokenizer.
It is the preload model of gunicorn, uWSGI and Android's zygote.

A forked service is still its own process, with the command line, environment,
stderr and process group it would have had. It runs the same `meshgate serve`
code path as in compose or Kubernetes, where each service is its own image
and there is nothing to share.

The launcher stays the parent of every service. It waits for them, reads their
exit codes and restarts them. To make that so, it marks itself the children's
subreaper, and the forkserver forks each service twice: the middle process
exits at once, and the kernel hands the service to the launcher. Only then
does the service ask to die with it (PR_SET_PDEATHSIG).

The forkserver must stay single-threaded and must never start gRPC's core
(no channel, no server): a process forked from it would inherit a broken copy.
Importing grpc does neither.

The wire is one Unix SOCK_SEQPACKET socket. The launcher sends a JSON request,
{"argv": [...], "env": {...}}, with the service's stderr attached (SCM_RIGHTS).
The forkserver answers {"pid": N} or {"error": "..."}. When the launcher closes
its end, the forkserver exits.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol

# The most a request may hold: an argv and an environment, a few KB in practice.
MAX_MESSAGE = 1 << 20
# How long a forked service waits for the launcher to adopt it.
ADOPT_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# What a service's argv starts with after the interpreter: it runs this CLI.
_CLI = ["-m", "meshgate"]
# What the forkserver's own argv starts with after the interpreter.
_FORKSERVER = ["-m", "meshgate.forkserver"]


def supported() -> bool:
    """Forking services needs Linux (a subreaper, a parent-death signal) and fd passing."""
    return sys.platform.startswith("linux") and hasattr(socket, "send_fds")


def _prctl(option: int, value: int) -> None:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    if prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def children_of(pid: int) -> list[int]:
    """The live and zombie children of `pid`, from every thread's /proc children list."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    return found


def become_subreaper() -> None:
    """Adopt every orphaned descendant, so that forked services become our children."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


# -- the launcher's end ----------------------------------------------------------


class ForkedProcess:
    """A service forked by the forkserver and adopted by the launcher: the part of
    `subprocess.Popen` that the launcher uses, over waitpid and kill."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not ours: adoption failed, or someone else reaped it
                self.returncode = 255
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired([str(self.pid)], timeout or 0.0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


class Spawner(Protocol):
    """What starts a process by fork: a forkserver's `Client`, or `Here`."""

    def spawn(self, argv: Sequence[str], env: dict[str, str], stderr: int) -> ForkedProcess: ...


class ForkError(Exception):
    """The forkserver could not fork a service (it died, or fork failed)."""


class Client:
    """The launcher's end of the socket to one forkserver."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._sock.settimeout(timeout)

    def spawn(self, argv: Sequence[str], env: dict[str, str], stderr: int) -> ForkedProcess:
        """Fork `argv` (a `python -m meshgate ...` command line) with `env`, writing to `stderr`."""
        request = json.dumps({"argv": list(argv), "env": env}).encode()
        try:
            socket.send_fds(self._sock, [request], [stderr])
            reply = self._sock.recv(MAX_MESSAGE)
        except OSError as exc:  # a timeout included
            self.close()  # a late reply must not answer the next request
            raise ForkError(f"forkserver unreachable: {exc}") from None
        if not reply:
            raise ForkError("forkserver exited")
        answer = json.loads(reply)
        if "pid" not in answer:
            raise ForkError(str(answer.get("error", "no pid in the forkserver's reply")))
        return ForkedProcess(int(answer["pid"]))

    def close(self) -> None:
        self._sock.close()


class Here:
    """Forks the forkserver from the launcher itself, so that it shares the launcher's
    pages as well (config, pydantic, grpc, redis-py: 40 MB of Pss).

    Only while the launcher is single-threaded and has not started gRPC's core, which
    is so as it starts; a forkserver started later is exec'ed.
    """

    def __init__(self, ours: socket.socket, theirs: socket.socket) -> None:
        self._ours = ours
        self._theirs = theirs

    def spawn(self, argv: Sequence[str], env: dict[str, str], stderr: int) -> ForkedProcess:
        """Fork the forkserver that `argv` (`command(...)`) names, with `env` and `stderr`."""
        sys.stdout.flush()
        sys.stderr.flush()
        # Out of our collector's reach, so that its passes do not write to (and so copy)
        # the pages we now share with the forkserver.
        gc.collect()
        gc.freeze()
        pid = os.fork()
        if pid:
            return ForkedProcess(pid)
        launcher = os.getppid()
        self._ours.close()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)  # not the launcher's handlers
        server = Service(list(argv), env, stderr, launcher)
        args = argv[1 + len(_FORKSERVER) :]
        _exit_after(lambda: server.become() or main(args, self._theirs))


def command(fd: int, modules: Sequence[str]) -> list[str]:
    """The forkserver's own command line: it reads requests on `fd` after importing `modules`."""
    return [sys.executable, *_FORKSERVER, str(fd), *modules]


def pair() -> tuple[socket.socket, socket.socket]:
    """(the launcher's end, the forkserver's end, to pass to it as an inheritable fd)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    return ours, theirs


# -- the forkserver --------------------------------------------------------------


# What every service imports as it starts, beside its own module.
COMMON_MODULES = ("meshgate.cli", "setproctitle", "uvloop")


def preload(modules: Sequence[str]) -> None:
    """Import what the services will import, load the tokenizer, and freeze it all."""
    for name in (*COMMON_MODULES, *modules):
        # A module that fails here fails again in its service, which reports it there.
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    with contextlib.suppress(Exception):
        from meshgate import tokens

        tokens.encoding()
    gc.collect()
    gc.freeze()


@dataclass
class Service:
    """What a forked service runs, once it is the launcher's child."""

    argv: list[str]
    env: dict[str, str]
    stderr: int
    launcher: int

    def run(self) -> int:
        """Become the service, then run it (in the process the forkserver forked)."""
        failed = self.become()
        if failed:
            return failed
        from meshgate import cli

        return cli.main(self.argv[1 + len(_CLI) :])

    def become(self) -> int:
        """Take the launcher as parent and the service's stdio, title and environment;
        0, or the exit code of a process that must not go on."""
        os.setpgid(0, 0)  # Ctrl-C reaches only the launcher, as with an exec'ed child
        if not _adopted_by(self.launcher):
            return 1
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != self.launcher:  # the launcher died before prctl took effect
            return 1
        os.dup2(self.stderr, 2)
        os.close(self.stderr)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        import setproctitle

        # `ps`, `top` and the bench see the command line an exec'ed child would have had.
        # The title takes the room of the forkserver's environment block, so the service's
        # /proc/PID/environ reads empty; call it before the environment changes, as
        # setproctitle finds that room by reading it.
        setproctitle.setproctitle(" ".join(self.argv))
        os.environ.clear()
        os.environ.update(self.env)
        return 0


def _adopted_by(launcher: int) -> bool:
    """Wait for the middle process to exit and the kernel to reparent us to the launcher."""
    deadline = time.monotonic() + ADOPT_TIMEOUT_S
    while os.getppid() != launcher:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def serve(control: socket.socket, launcher: int) -> Service | None:
    """Answer fork requests until the launcher hangs up (None); in a forked service,
    return what it runs instead."""
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 1)
        except OSError:
            return None
        if not message:
            return None
        try:
            request = json.loads(message)
            argv = [str(arg) for arg in request["argv"]]
            env = {str(k): str(v) for k, v in request["env"].items()}
            if argv[1 : 1 + len(_CLI)] != _CLI or len(fds) != 1:
                raise ValueError("not a meshgate command with its stderr")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"error": f"bad request: {exc}"}).encode())
            continue
        reply, service = _fork(Service(argv, env, fds[0], launcher), control)
        if service is not None:
            return service
        control.send(json.dumps(reply).encode())


def _fork(service: Service, control: socket.socket) -> tuple[dict[str, object], Service | None]:
    """Fork twice; in the service, return it; in the forkserver, return its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    try:
        middle = os.fork()
    except OSError as exc:
        for fd in (read_end, write_end, service.stderr):
            os.close(fd)
        return {"error": f"fork: {exc.strerror}"}, None
    if middle == 0:
        os.close(read_end)
        try:
            pid = os.fork()
        except OSError:
            os._exit(1)
        if pid == 0:
            os.close(write_end)
            control.close()
            return {}, service
        os.write(write_end, str(pid).encode())
        os._exit(0)
    os.close(write_end)
    os.close(service.stderr)
    with open(read_end, "rb") as pipe:
        written = pipe.read()
    os.waitpid(middle, 0)
    if not written:
        return {"error": "fork: the middle process failed"}, None
    return {"pid": int(written)}, None


def _exit_after(run: Callable[[], int]) -> NoReturn:
    """End a process forked from the launcher with `run()`'s exit code, never returning
    into the launcher's frames; it exits as the interpreter would (non-daemon threads
    joined, atexit handlers run, output flushed), then os._exit."""
    code = 1
    try:
        code = run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            threading._shutdown()  # type: ignore[attr-defined]
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main(args: Sequence[str], control: socket.socket | None = None) -> int:
    """The forkserver: `args` is its fd and the modules to preload (see `command`)."""
    if control is None:
        control = socket.socket(fileno=int(args[0]))
    launcher = os.getppid()
    preload(args[1:])
    service = serve(control, launcher)
    return 0 if service is None else service.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
