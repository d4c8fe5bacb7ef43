from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BudgetPeriod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUDGET_PERIOD_UNSPECIFIED: _ClassVar[BudgetPeriod]
    BUDGET_PERIOD_TOTAL: _ClassVar[BudgetPeriod]
    BUDGET_PERIOD_DAY: _ClassVar[BudgetPeriod]
    BUDGET_PERIOD_MONTH: _ClassVar[BudgetPeriod]

class RedisFailurePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REDIS_FAILURE_POLICY_UNSPECIFIED: _ClassVar[RedisFailurePolicy]
    REDIS_FAILURE_POLICY_FAIL_CLOSED: _ClassVar[RedisFailurePolicy]
    REDIS_FAILURE_POLICY_FAIL_OPEN: _ClassVar[RedisFailurePolicy]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_API: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]
BUDGET_PERIOD_UNSPECIFIED: BudgetPeriod
BUDGET_PERIOD_TOTAL: BudgetPeriod
BUDGET_PERIOD_DAY: BudgetPeriod
BUDGET_PERIOD_MONTH: BudgetPeriod
REDIS_FAILURE_POLICY_UNSPECIFIED: RedisFailurePolicy
REDIS_FAILURE_POLICY_FAIL_CLOSED: RedisFailurePolicy
REDIS_FAILURE_POLICY_FAIL_OPEN: RedisFailurePolicy
ROLE_UNSPECIFIED: Role
ROLE_API: Role
ROLE_ADMIN: Role

class Error(_message.Message):
    __slots__ = ("http_status", "type", "message", "param", "code", "doc_url", "retry_after_seconds", "rate_limit", "should_retry", "retry_after_ms")
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PARAM_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DOC_URL_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    SHOULD_RETRY_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    http_status: int
    type: str
    message: str
    param: str
    code: str
    doc_url: str
    retry_after_seconds: int
    rate_limit: RateLimitState
    should_retry: bool
    retry_after_ms: int
    def __init__(self, http_status: _Optional[int] = ..., type: _Optional[str] = ..., message: _Optional[str] = ..., param: _Optional[str] = ..., code: _Optional[str] = ..., doc_url: _Optional[str] = ..., retry_after_seconds: _Optional[int] = ..., rate_limit: _Optional[_Union[RateLimitState, _Mapping]] = ..., should_retry: _Optional[bool] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class RateLimitState(_message.Message):
    __slots__ = ("limit_requests", "limit_tokens", "remaining_requests", "remaining_tokens", "reset_requests_ms", "reset_tokens_ms", "limit_budget_micro_usd", "remaining_budget_micro_usd", "reset_budget_ms")
    LIMIT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RESET_REQUESTS_MS_FIELD_NUMBER: _ClassVar[int]
    RESET_TOKENS_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_BUDGET_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    REMAINING_BUDGET_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    RESET_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    limit_requests: int
    limit_tokens: int
    remaining_requests: int
    remaining_tokens: int
    reset_requests_ms: int
    reset_tokens_ms: int
    limit_budget_micro_usd: int
    remaining_budget_micro_usd: int
    reset_budget_ms: int
    def __init__(self, limit_requests: _Optional[int] = ..., limit_tokens: _Optional[int] = ..., remaining_requests: _Optional[int] = ..., remaining_tokens: _Optional[int] = ..., reset_requests_ms: _Optional[int] = ..., reset_tokens_ms: _Optional[int] = ..., limit_budget_micro_usd: _Optional[int] = ..., remaining_budget_micro_usd: _Optional[int] = ..., reset_budget_ms: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("requests_per_minute", "tokens_per_minute", "max_concurrency", "budget_tokens", "budget_micro_usd", "budget_period")
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    requests_per_minute: int
    tokens_per_minute: int
    max_concurrency: int
    budget_tokens: int
    budget_micro_usd: int
    budget_period: BudgetPeriod
    def __init__(self, requests_per_minute: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ..., max_concurrency: _Optional[int] = ..., budget_tokens: _Optional[int] = ..., budget_micro_usd: _Optional[int] = ..., budget_period: _Optional[_Union[BudgetPeriod, str]] = ...) -> None: ...

class Principal(_message.Message):
    __slots__ = ("key_id", "name", "tenant", "limits", "allowed_models", "tenant_limits", "redis_failure_policy", "roles", "fallbacks")
    class FallbacksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ModelFallbacks
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ModelFallbacks, _Mapping]] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    TENANT_LIMITS_FIELD_NUMBER: _ClassVar[int]
    REDIS_FAILURE_POLICY_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    name: str
    tenant: str
    limits: Limits
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    tenant_limits: Limits
    redis_failure_policy: RedisFailurePolicy
    roles: _containers.RepeatedScalarFieldContainer[Role]
    fallbacks: _containers.MessageMap[str, ModelFallbacks]
    def __init__(self, key_id: _Optional[str] = ..., name: _Optional[str] = ..., tenant: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., allowed_models: _Optional[_Iterable[str]] = ..., tenant_limits: _Optional[_Union[Limits, _Mapping]] = ..., redis_failure_policy: _Optional[_Union[RedisFailurePolicy, str]] = ..., roles: _Optional[_Iterable[_Union[Role, str]]] = ..., fallbacks: _Optional[_Mapping[str, ModelFallbacks]] = ...) -> None: ...

class ModelFallbacks(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, models: _Optional[_Iterable[str]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_creation_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_CREATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., cache_creation_tokens: _Optional[int] = ...) -> None: ...

class RequestContext(_message.Message):
    __slots__ = ("request_id", "principal", "prompt_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    principal: Principal
    prompt_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., principal: _Optional[_Union[Principal, _Mapping]] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...
