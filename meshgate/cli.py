"""The `meshgate` command: `up` for a laptop, `serve SERVICE` for compose or Kubernetes.

Expected failures (a bad config, an unknown service, a port in use) end with a
one-line `meshgate: ...` message on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import resource
import sys
from collections.abc import Callable, Coroutine, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn, cast

from meshgate import logs, tracing
from meshgate.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from admin.client import AdminClient
    from services.auth.keys import LimitsChange

# Allocations between first-generation collections (CPython's default is 700).
GC_GEN0_THRESHOLD = 10_000

# Where each process's entry point lives: `run(config)`, async for gRPC services.
SERVICE_MODULES: dict[str, str] = {
    "auth": "services.auth.server",
    "quota": "services.quota.server",
    "validation": "services.validation.server",
    "router": "services.router.server",
    "engine": "services.engines.reference.server",
    "ledger": "services.ledger.server",
    "edge": "edge.app",
    "admin": "admin.app",
}
# The HTTP listeners: a synchronous `run(config)` (uvicorn), and /readyz for `health`.
HTTP_SERVICES = ("edge", "admin")


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
    up.add_argument(
        "--replicas",
        default="",
        metavar="NAME=N,...",
        help="run N replicas of gRPC services on loopback, e.g. quota=2,auth=2,router=2",
    )

    serve = commands.add_parser("serve", help="run one service in the foreground")
    serve.add_argument(
        "service",
        choices=list(SERVICE_MODULES),
        metavar="SERVICE",
        help="one of: " + ", ".join(SERVICE_MODULES),
    )
    serve.add_argument("--config", metavar="FILE", help="config file (default: the sample)")

    health = commands.add_parser(
        "health", help="exit 0 if a service answers its health check (for containers)"
    )
    health.add_argument("service", choices=list(SERVICE_MODULES), metavar="SERVICE")
    health.add_argument("--config", metavar="FILE", help="config file (default: the sample)")

    _add_keys(commands)
    _add_tenants(commands)
    _add_usage(commands)
    return parser


class _OneLineParser(argparse.ArgumentParser):
    """A subcommand parser whose usage errors are one `meshgate: ...` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"meshgate: {message} (see `{self.prog} --help`)\n")


def _add_limits(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The limits keys and tenants share; without defaults, an option left out is unchanged."""

    def default(value: object) -> object:
        return value if defaults else None

    parser.add_argument(
        "--rpm", type=_non_negative, default=default(0), help="requests per minute (0: unlimited)"
    )
    parser.add_argument(
        "--tpm", type=_non_negative, default=default(0), help="tokens per minute (0: unlimited)"
    )
    parser.add_argument(
        "--max-concurrency",
        type=_non_negative,
        default=default(0),
        help="requests in flight (0: unlimited)",
    )
    parser.add_argument(
        "--budget-tokens",
        type=_non_negative,
        default=default(0),
        help="lifetime tokens (0: unlimited)",
    )
    parser.add_argument(
        "--budget-usd",
        type=_usd,
        default=default(Decimal(0)),
        metavar="DOLLARS",
        help="dollars per --budget-period, at most 6 decimals (0: unlimited)",
    )
    parser.add_argument(
        "--budget-period",
        choices=["total", "day", "month"],
        default=default("total"),
        help="what --budget-usd covers: in total, or per UTC calendar day or month",
    )


def _add_keys(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser(
        "keys", help="manage API keys (through the running mesh's admin API, or in Redis)"
    )
    keys.add_argument("--config", metavar="FILE", help="config file (its redis.url, or REDIS_URL)")
    _add_mesh(keys)
    key_commands = keys.add_subparsers(
        dest="keys_command", required=True, metavar="ACTION", parser_class=_OneLineParser
    )
    create = key_commands.add_parser("create", help="create a key and print its secret once")
    create.add_argument("--name", required=True, help="a label for people")
    create.add_argument(
        "--tenant",
        default="",
        help="an existing tenant whose limits the key shares (default: none)",
    )
    _add_limits(create, defaults=True)
    create.add_argument(
        "--models", default="", help="comma-separated model ids the key may use (default: all)"
    )
    create.add_argument(
        "--fallbacks",
        type=_fallbacks,
        default={},
        help="the key's own model fallbacks, replacing the catalog's: MODEL=FB1,FB2;OTHER=FB3",
    )
    create.add_argument("--expires", help="a duration (30d, 12h, 90m) or an ISO date/time")
    create.add_argument(
        "--redis-failure-policy",
        choices=["fail_closed", "fail_open"],
        default="fail_closed",
        help="when Redis is down: refuse with 503 (fail_closed) or admit and count it (fail_open)",
    )
    create.add_argument(
        "--admin",
        action="store_true",
        help="an admin key (the admin API, not the inference API; add --roles api,admin for both)",
    )
    create.add_argument(
        "--roles",
        type=_roles,
        help="comma-separated roles: api (the inference API, the default), admin, or both",
    )
    update = key_commands.add_parser(
        "update", help="change a key's limits in place (same secret); replicas see it at once"
    )
    update.add_argument("key_id", help="the key's id, as `keys list` shows it")
    _add_limits(update, defaults=False)
    update.add_argument("--models", help="comma-separated model ids; an empty string allows all")
    update.add_argument(
        "--fallbacks",
        type=_fallbacks,
        help="replaces the key's fallbacks (MODEL=FB1,FB2;OTHER=FB3); an empty string gives "
        "back the catalog's",
    )
    update.add_argument("--expires", help="a duration, an ISO date/time, or `never`")
    listing = key_commands.add_parser(
        "list", help="list keys: ids, names, limits, remaining budget; never secrets"
    )
    _add_format(listing)
    revoke = key_commands.add_parser(
        "revoke", help="revoke a key by id; every replica stops accepting it"
    )
    revoke.add_argument("key_id", help="the key's id, as `keys list` shows it")
    for action in key_commands.choices.values():
        _add_mesh(action, action=True)


def _add_tenants(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tenants = commands.add_parser(
        "tenants", help="manage tenants (teams), whose limits their keys share"
    )
    tenants.add_argument(
        "--config", metavar="FILE", help="config file (its redis.url, or REDIS_URL)"
    )
    _add_mesh(tenants)
    tenant_commands = tenants.add_subparsers(
        dest="tenants_command", required=True, metavar="ACTION", parser_class=_OneLineParser
    )
    create = tenant_commands.add_parser("create", help="create a tenant")
    create.add_argument("--id", required=True, dest="tenant_id", help="the tenant's id")
    _add_limits(create, defaults=True)
    update = tenant_commands.add_parser(
        "update", help="change a tenant's limits; replicas see it at once"
    )
    update.add_argument("tenant_id", metavar="TENANT", help="the tenant's id")
    _add_limits(update, defaults=False)
    listing = tenant_commands.add_parser(
        "list", help="list tenants (config and Redis) with limits and remaining budget"
    )
    _add_format(listing)
    for action in tenant_commands.choices.values():
        _add_mesh(action, action=True)


def _add_mesh(parser: argparse.ArgumentParser, *, action: bool = False) -> None:
    """Which mesh: `--url` names one; else a local `meshgate up` is found by its runtime file.

    Given to the command and to each of its actions (`keys list --url ...` reads as well
    as `keys --url ... list`); an action's copy only counts when it is used.
    """
    default = argparse.SUPPRESS if action else None
    parser.add_argument(
        "--url",
        metavar="URL",
        default=default,
        help="a mesh's admin listener (https://admin.example.com); default: the local "
        "`meshgate up`, else REDIS_URL's key store directly",
    )
    parser.add_argument(
        "--admin-key",
        metavar="KEY",
        default=default,
        help="the admin key for --url (better: MESHGATE_ADMIN_KEY, out of shell history)",
    )


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=["table", "json"],
        default="table",
        help="a table for people, or a JSON array for scripts",
    )


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _roles(text: str) -> tuple[str, ...]:
    roles = tuple(sorted({part.strip() for part in text.split(",") if part.strip()}))
    unknown = [r for r in roles if r not in ("api", "admin")]
    if unknown or not roles:
        raise argparse.ArgumentTypeError("choose from api, admin (comma-separated)")
    return roles


def _fallbacks(text: str) -> dict[str, tuple[str, ...]]:
    """`MODEL=FB1,FB2;OTHER=FB3`: per model id, the fallbacks tried in order (`MODEL=`: none)."""
    chains: dict[str, tuple[str, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        model, equals, chain = part.partition("=")
        if not equals or not model.strip():
            raise argparse.ArgumentTypeError("use MODEL=FALLBACK1,FALLBACK2;OTHER=FALLBACK3")
        chains[model.strip()] = _models(chain)
    return chains


def _usd(text: str) -> Decimal:
    from services.auth.keys import parse_usd

    try:
        return parse_usd(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage or help
        return exc.code if isinstance(exc.code, int) else 2

    if args.command == "up":
        from meshgate import launcher

        try:
            replicas = launcher.parse_replicas(args.replicas)
        except ValueError as exc:
            print(f"meshgate: {exc}", file=sys.stderr)
            return 2
        return launcher.run(args.config, host=args.host, port=args.port, replicas=replicas)
    if args.command == "serve":
        return serve(args.service, args.config)
    if args.command == "health":
        return health(args.service, args.config)
    if args.command == "tenants":
        return tenants(args)
    if args.command == "usage":
        return usage(args)
    return keys(args)


def _config(path: str | None) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"meshgate: {exc}", file=sys.stderr)
        return None


def health(service: str, config_path: str | None) -> int:
    """One health check of the process listening here (not a load-balanced peer)."""
    from meshgate.launcher import grpc_serving, http_ready, local_host

    config = _config(config_path)
    if config is None:
        return 2
    if service in HTTP_SERVICES:
        site = config.edge if service == "edge" else config.admin
        ok = http_ready(f"http://{local_host(site.host)}:{site.port}/readyz")
    else:
        listen = config.services.get(service)
        ok = grpc_serving(f"{local_host(listen.host)}:{listen.port}", tls=config.tls)
    return 0 if ok else 1


def _limits_change(args: argparse.Namespace) -> LimitsChange:
    from services.auth.keys import LimitsChange

    return LimitsChange(
        rpm=args.rpm,
        tpm=args.tpm,
        max_concurrency=args.max_concurrency,
        budget_tokens=args.budget_tokens,
        budget_usd=args.budget_usd,
        budget_period=args.budget_period,
    )


def _models(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def _remote(args: argparse.Namespace, config: Config) -> AdminClient | None:
    from admin.client import target

    return target(
        config,
        url=args.url,
        admin_key=args.admin_key,
        config_path=args.config,
        environ=os.environ,
    )


def _key_roles(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(args.roles or (("admin",) if args.admin else ("api",)))


def keys(args: argparse.Namespace) -> int:
    from services.auth import admin

    config = _config(args.config)
    if config is None:
        return 2
    try:
        client = _remote(args, config)
        if client is not None:
            _keys_remote(args, client)
        elif args.keys_command == "create":
            asyncio.run(
                admin.create(
                    config,
                    name=args.name,
                    tenant=args.tenant,
                    rpm=args.rpm,
                    tpm=args.tpm,
                    max_concurrency=args.max_concurrency,
                    budget_tokens=args.budget_tokens,
                    budget_usd=args.budget_usd,
                    budget_period=args.budget_period,
                    models=_models(args.models),
                    fallbacks=args.fallbacks,
                    expires=args.expires,
                    redis_failure_policy=args.redis_failure_policy,
                    roles=_key_roles(args),
                )
            )
        elif args.keys_command == "update":
            models = None if args.models is None else _models(args.models)
            asyncio.run(
                admin.update(
                    config,
                    args.key_id,
                    _limits_change(args),
                    models=models,
                    fallbacks=args.fallbacks,
                    expires=args.expires,
                )
            )
        elif args.keys_command == "list":
            asyncio.run(admin.list_keys(config, args.format))
        else:
            asyncio.run(admin.revoke(config, args.key_id))
    except admin.AdminError as exc:
        print(f"meshgate: {exc}", file=sys.stderr)
        return 1
    return 0


def _keys_remote(args: argparse.Namespace, client: AdminClient) -> None:
    from admin import client as remote

    if args.keys_command == "create":
        remote.create_key(
            client,
            name=args.name,
            tenant=args.tenant,
            change=_limits_change(args),
            models=_models(args.models),
            fallbacks=args.fallbacks,
            expires=args.expires,
            redis_failure_policy=args.redis_failure_policy,
            roles=_key_roles(args),
        )
    elif args.keys_command == "update":
        models = None if args.models is None else _models(args.models)
        remote.update_key(
            client,
            args.key_id,
            _limits_change(args),
            models=models,
            fallbacks=args.fallbacks,
            expires=args.expires,
        )
    elif args.keys_command == "list":
        remote.list_keys(client, args.format)
    else:
        remote.revoke(client, args.key_id)


def tenants(args: argparse.Namespace) -> int:
    from admin import client as remote
    from services.auth import admin

    config = _config(args.config)
    if config is None:
        return 2
    try:
        client = _remote(args, config)
        if args.tenants_command == "list":
            if client is None:
                asyncio.run(admin.list_tenants(config, args.format))
            else:
                remote.list_tenants(client, args.format)
            return 0
        change = _limits_change(args)
        if client is not None:
            make = (
                remote.create_tenant if args.tenants_command == "create" else remote.update_tenant
            )
            make(client, args.tenant_id, change)
        elif args.tenants_command == "create":
            asyncio.run(admin.create_tenant(config, args.tenant_id, change))
        else:
            asyncio.run(admin.update_tenant(config, args.tenant_id, change))
    except admin.AdminError as exc:
        print(f"meshgate: {exc}", file=sys.stderr)
        return 1
    return 0


def service_module(service: str, config: Config) -> str:
    """The module whose `run(config)` is this service: the engine's depends on its backend."""
    if service == "engine" and config.services.engine.backend == "local":
        return "services.engines.local.server"
    return SERVICE_MODULES[service]


def serve(service: str, config_path: str | None) -> int:
    """Run one process of the mesh until SIGTERM; its own module handles the drain."""
    config = _config(config_path)
    if config is None:
        return 2
    logs.configure(service, config.logging.level, config.logging.format)
    tracing.configure(service, config.tracing)
    module_name = service_module(service, config)
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
    _tune_gc()
    _raise_fd_limit()
    try:
        if service in HTTP_SERVICES:
            cast(Callable[[Config], None], run)(config)
        else:
            asyncio.run(cast(Callable[[Config], Coroutine[Any, Any, None]], run)(config))
    except ConfigError as exc:  # a service may check the parts of the config it owns
        print(f"meshgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the service installed its own handler
        return 130
    return 0


def _tune_gc() -> None:
    """Keep the cyclic collector's pauses out of the latency tail.

    What exists once the service's modules are imported (code, protobuf
    descriptors, tokenizer and config objects) lives as long as the process:
    frozen, no collection walks it again. A larger first generation lets the
    short-lived objects of a request die by reference counting before a
    collection ever looks at them.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def _raise_fd_limit() -> None:
    """Lift the soft limit on open files to the hard one, as Go's runtime does: every open
    stream holds a socket in the edge and one or two in the router, and the common soft
    default (1,024) would refuse connections long before memory or CPU run out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _use_uvloop() -> None:
    """Run asyncio on uvloop when it is installed: less overhead per request."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# ------------------------------------------------------------------ usage ----


def _add_usage(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = commands.add_parser(
        "usage", help="usage and spend from the ledger: summaries or the raw records"
    )
    usage.add_argument("--config", metavar="FILE", help="config file (its services.ledger)")
    _add_mesh(usage)
    usage.add_argument("--key", default="", metavar="KEY_ID", help="only this key's usage")
    usage.add_argument("--tenant", default="", help="only this tenant's usage")
    usage.add_argument("--model", default="", help="only this model's usage")
    usage.add_argument("--since", help="from: an ISO date/time (UTC) or a duration ago: 24h, 7d")
    usage.add_argument("--until", help="until (exclusive): the same forms as --since")
    usage.add_argument(
        "--group-by",
        default="key,model",
        metavar="DIMS",
        help="any of key,tenant,model (and hour or day); default key,model",
    )
    usage.add_argument(
        "--bucket", choices=["hour", "day", "none"], help="a row per UTC hour or day (or none)"
    )
    usage.add_argument(
        "--records", action="store_true", help="the raw records, newest first, not a summary"
    )
    usage.add_argument(
        "--limit", type=_positive, default=100, help="records at most with --records (100)"
    )
    usage.add_argument("--format", choices=["table", "json", "csv"], default="table")


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def usage(args: argparse.Namespace) -> int:
    """Ask the ledger (through the mesh's admin API, or its UsageService directly); a one-line
    error, never a traceback, when it cannot."""
    from admin import client as remote
    from services.auth.admin import AdminError
    from services.ledger import report

    config = _config(args.config)
    if config is None:
        return 2
    try:
        query = report.build_query(
            key=args.key,
            tenant=args.tenant,
            model=args.model,
            since=args.since,
            until=args.until,
            group_by=args.group_by,
            bucket=args.bucket,
            records=args.records,
            limit=args.limit,
            fmt=args.format,
        )
        client = _remote(args, config)
        if client is None:
            asyncio.run(report.usage(config, query, sys.stdout))
        else:
            remote.usage(client, query, sys.stdout)
    except report.ReportError as exc:
        print(f"meshgate: {exc}", file=sys.stderr)
        return exc.code
    except AdminError as exc:
        print(f"meshgate: {exc}", file=sys.stderr)
        return 1
    return 0
