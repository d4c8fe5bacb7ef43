from meshgate.v1 import common_pb2 as _common_pb2
from meshgate.v1 import usage_pb2 as _usage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReserveRequest(_message.Message):
    __slots__ = ("principal", "prompt_tokens", "request_id", "max_tokens", "record", "settlements")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENTS_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    prompt_tokens: int
    request_id: str
    max_tokens: int
    record: _usage_pb2.UsageRecord
    settlements: _containers.RepeatedCompositeFieldContainer[Settlement]
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., prompt_tokens: _Optional[int] = ..., request_id: _Optional[str] = ..., max_tokens: _Optional[int] = ..., record: _Optional[_Union[_usage_pb2.UsageRecord, _Mapping]] = ..., settlements: _Optional[_Iterable[_Union[Settlement, _Mapping]]] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("lease_id", "reserved_tokens", "rate_limit", "reserved_micro_usd", "unreserved")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    UNRESERVED_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    reserved_tokens: int
    rate_limit: _common_pb2.RateLimitState
    reserved_micro_usd: int
    unreserved: bool
    def __init__(self, lease_id: _Optional[str] = ..., reserved_tokens: _Optional[int] = ..., rate_limit: _Optional[_Union[_common_pb2.RateLimitState, _Mapping]] = ..., reserved_micro_usd: _Optional[int] = ..., unreserved: _Optional[bool] = ...) -> None: ...

class Settlement(_message.Message):
    __slots__ = ("key_limits", "tenant_limits", "reserved_tokens", "reserved_micro_usd", "record", "unreserved")
    KEY_LIMITS_FIELD_NUMBER: _ClassVar[int]
    TENANT_LIMITS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    UNRESERVED_FIELD_NUMBER: _ClassVar[int]
    key_limits: _common_pb2.Limits
    tenant_limits: _common_pb2.Limits
    reserved_tokens: int
    reserved_micro_usd: int
    record: _usage_pb2.UsageRecord
    unreserved: bool
    def __init__(self, key_limits: _Optional[_Union[_common_pb2.Limits, _Mapping]] = ..., tenant_limits: _Optional[_Union[_common_pb2.Limits, _Mapping]] = ..., reserved_tokens: _Optional[int] = ..., reserved_micro_usd: _Optional[int] = ..., record: _Optional[_Union[_usage_pb2.UsageRecord, _Mapping]] = ..., unreserved: _Optional[bool] = ...) -> None: ...

class SettleRequest(_message.Message):
    __slots__ = ("settlement",)
    SETTLEMENT_FIELD_NUMBER: _ClassVar[int]
    settlement: Settlement
    def __init__(self, settlement: _Optional[_Union[Settlement, _Mapping]] = ...) -> None: ...

class SettleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRateLimitRequest(_message.Message):
    __slots__ = ("principal",)
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ...) -> None: ...

class GetRateLimitResponse(_message.Message):
    __slots__ = ("rate_limit",)
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    rate_limit: _common_pb2.RateLimitState
    def __init__(self, rate_limit: _Optional[_Union[_common_pb2.RateLimitState, _Mapping]] = ...) -> None: ...

class SettleManyRequest(_message.Message):
    __slots__ = ("settlements",)
    SETTLEMENTS_FIELD_NUMBER: _ClassVar[int]
    settlements: _containers.RepeatedCompositeFieldContainer[Settlement]
    def __init__(self, settlements: _Optional[_Iterable[_Union[Settlement, _Mapping]]] = ...) -> None: ...

class SettleManyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReserveManyRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ReserveRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ReserveRequest, _Mapping]]] = ...) -> None: ...

class ReserveManyResponse(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[ReserveOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[ReserveOutcome, _Mapping]]] = ...) -> None: ...

class ReserveOutcome(_message.Message):
    __slots__ = ("admitted", "error")
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    admitted: ReserveResponse
    error: _common_pb2.Error
    def __init__(self, admitted: _Optional[_Union[ReserveResponse, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ...) -> None: ...
