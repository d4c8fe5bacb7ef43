from meshgate.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Key(_message.Message):
    __slots__ = ("key_id", "name", "tenant", "limits", "models", "redis_failure_policy", "roles", "created_unix_us", "expires_unix_us", "revoked_unix_us", "spent_micro_usd", "fallbacks")
    class FallbacksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.ModelFallbacks
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.ModelFallbacks, _Mapping]] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    REDIS_FAILURE_POLICY_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    REVOKED_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    SPENT_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    name: str
    tenant: str
    limits: _common_pb2.Limits
    models: _containers.RepeatedScalarFieldContainer[str]
    redis_failure_policy: _common_pb2.RedisFailurePolicy
    roles: _containers.RepeatedScalarFieldContainer[_common_pb2.Role]
    created_unix_us: int
    expires_unix_us: int
    revoked_unix_us: int
    spent_micro_usd: int
    fallbacks: _containers.MessageMap[str, _common_pb2.ModelFallbacks]
    def __init__(self, key_id: _Optional[str] = ..., name: _Optional[str] = ..., tenant: _Optional[str] = ..., limits: _Optional[_Union[_common_pb2.Limits, _Mapping]] = ..., models: _Optional[_Iterable[str]] = ..., redis_failure_policy: _Optional[_Union[_common_pb2.RedisFailurePolicy, str]] = ..., roles: _Optional[_Iterable[_Union[_common_pb2.Role, str]]] = ..., created_unix_us: _Optional[int] = ..., expires_unix_us: _Optional[int] = ..., revoked_unix_us: _Optional[int] = ..., spent_micro_usd: _Optional[int] = ..., fallbacks: _Optional[_Mapping[str, _common_pb2.ModelFallbacks]] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("id", "limits", "source", "created_unix_us", "spent_micro_usd")
    ID_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    SPENT_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    id: str
    limits: _common_pb2.Limits
    source: str
    created_unix_us: int
    spent_micro_usd: int
    def __init__(self, id: _Optional[str] = ..., limits: _Optional[_Union[_common_pb2.Limits, _Mapping]] = ..., source: _Optional[str] = ..., created_unix_us: _Optional[int] = ..., spent_micro_usd: _Optional[int] = ...) -> None: ...

class LimitsUpdate(_message.Message):
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
    budget_period: _common_pb2.BudgetPeriod
    def __init__(self, requests_per_minute: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ..., max_concurrency: _Optional[int] = ..., budget_tokens: _Optional[int] = ..., budget_micro_usd: _Optional[int] = ..., budget_period: _Optional[_Union[_common_pb2.BudgetPeriod, str]] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("name", "tenant", "limits", "models", "expires_unix_us", "redis_failure_policy", "roles", "fallbacks")
    class FallbacksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.ModelFallbacks
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.ModelFallbacks, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    REDIS_FAILURE_POLICY_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tenant: str
    limits: _common_pb2.Limits
    models: _containers.RepeatedScalarFieldContainer[str]
    expires_unix_us: int
    redis_failure_policy: _common_pb2.RedisFailurePolicy
    roles: _containers.RepeatedScalarFieldContainer[_common_pb2.Role]
    fallbacks: _containers.MessageMap[str, _common_pb2.ModelFallbacks]
    def __init__(self, name: _Optional[str] = ..., tenant: _Optional[str] = ..., limits: _Optional[_Union[_common_pb2.Limits, _Mapping]] = ..., models: _Optional[_Iterable[str]] = ..., expires_unix_us: _Optional[int] = ..., redis_failure_policy: _Optional[_Union[_common_pb2.RedisFailurePolicy, str]] = ..., roles: _Optional[_Iterable[_Union[_common_pb2.Role, str]]] = ..., fallbacks: _Optional[_Mapping[str, _common_pb2.ModelFallbacks]] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key", "secret")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    key: Key
    secret: str
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[Key]
    def __init__(self, keys: _Optional[_Iterable[_Union[Key, _Mapping]]] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class GetKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...

class UpdateKeyRequest(_message.Message):
    __slots__ = ("key_id", "limits", "replace_models", "models", "expires_unix_us", "roles", "replace_fallbacks", "fallbacks")
    class FallbacksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.ModelFallbacks
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.ModelFallbacks, _Mapping]] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_MODELS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    limits: LimitsUpdate
    replace_models: bool
    models: _containers.RepeatedScalarFieldContainer[str]
    expires_unix_us: int
    roles: _containers.RepeatedScalarFieldContainer[_common_pb2.Role]
    replace_fallbacks: bool
    fallbacks: _containers.MessageMap[str, _common_pb2.ModelFallbacks]
    def __init__(self, key_id: _Optional[str] = ..., limits: _Optional[_Union[LimitsUpdate, _Mapping]] = ..., replace_models: _Optional[bool] = ..., models: _Optional[_Iterable[str]] = ..., expires_unix_us: _Optional[int] = ..., roles: _Optional[_Iterable[_Union[_common_pb2.Role, str]]] = ..., replace_fallbacks: _Optional[bool] = ..., fallbacks: _Optional[_Mapping[str, _common_pb2.ModelFallbacks]] = ...) -> None: ...

class UpdateKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...

class RotateKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RotateKeyResponse(_message.Message):
    __slots__ = ("key", "secret", "revoked")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    key: Key
    secret: str
    revoked: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ..., secret: _Optional[str] = ..., revoked: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("id", "limits")
    ID_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    id: str
    limits: _common_pb2.Limits
    def __init__(self, id: _Optional[str] = ..., limits: _Optional[_Union[_common_pb2.Limits, _Mapping]] = ...) -> None: ...

class CreateTenantResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ...) -> None: ...

class UpdateTenantRequest(_message.Message):
    __slots__ = ("id", "limits")
    ID_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    id: str
    limits: LimitsUpdate
    def __init__(self, id: _Optional[str] = ..., limits: _Optional[_Union[LimitsUpdate, _Mapping]] = ...) -> None: ...

class UpdateTenantResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...
