"""The `meshgate` command: `up` for a laptop, `serve SERVICE` for compose or Kubernetes.

Expected failures (a bad config, an unknown service, a port in use) end with a
one-line `meshgate: ...` message on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

from meshgate import logs
from meshgate.config import Config, ConfigError, load_config

# Where each process's entry point lives: `run(config)`, async for gRPC services.
SERVICE_MODULES: dict[str, str] = {
    "auth": "services.auth.server",
    "quota": "services.quota.server",
    "validation": "services.validation.server",
    "router": "services.router.server",
    "engine": "services.engines.reference.server",
    "edge": "edge.app",
}
KEYS_NOT_IMPLEMENTED = (
    "not implemented yet: keys are read from the config file (issue: auth and quota)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshgate",
        description="OpenAI-compatible inference gateway built as a gRPC service mesh.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start the whole local mesh (Ctrl-C stops it)")
    up.add_argument("--config", metavar="FILE", help="config file (default: the sample)")
    up.add_argument("--host", help="edge listen host (overrides edge.host)")
    up.add_argument("--port", type=int, help="edge listen port (overrides edge.port)")

    serve = commands.add_parser("serve", help="run one service in the foreground")
    serve.add_argument(
        "service",
        choices=list(SERVICE_MODULES),
        metavar="SERVICE",
        help="one of: " + ", ".join(SERVICE_MODULES),
    )
    serve.add_argument("--config", metavar="FILE", help="config file (default: the sample)")

    keys = commands.add_parser("keys", help="manage API keys in the key store")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    for action, text in (
        ("create", "create a key and print its secret once"),
        ("list", "list keys (ids and names, never secrets)"),
        ("revoke", "revoke a key by id"),
    ):
        key_commands.add_parser(action, help=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        # Arguments to `keys` are accepted unseen until those commands exist.
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "keys":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse already printed usage or help
        return exc.code if isinstance(exc.code, int) else 2

    if args.command == "up":
        from meshgate import launcher

        return launcher.run(args.config, host=args.host, port=args.port)
    if args.command == "serve":
        return serve(args.service, args.config)
    print(f"meshgate: {KEYS_NOT_IMPLEMENTED}", file=sys.stderr)
    return 2


def serve(service: str, config_path: str | None) -> int:
    """Run one process of the mesh until SIGTERM; its own module handles the drain."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"meshgate: {exc}", file=sys.stderr)
        return 2
    logs.configure(service, config.logging.level)
    module_name = SERVICE_MODULES[service]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only a missing service module is an expected failure; a broken import inside it is a bug.
        if exc.name is None or not f"{module_name}.".startswith(f"{exc.name}."):
            raise
        print(
            f"meshgate: service {service} is not available ({module_name} not found)",
            file=sys.stderr,
        )
        return 1
    run = getattr(module, "run", None)
    if not callable(run):
        print(f"meshgate: {module_name} has no run(config)", file=sys.stderr)
        return 1
    _use_uvloop()
    try:
        if service == "edge":
            cast(Callable[[Config], None], run)(config)
        else:
            asyncio.run(cast(Callable[[Config], Coroutine[Any, Any, None]], run)(config))
    except ConfigError as exc:  # a service may check the parts of the config it owns
        print(f"meshgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the service installed its own handler
        return 130
    return 0


def _use_uvloop() -> None:
    """Run asyncio on uvloop when it is installed: less overhead per request."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
