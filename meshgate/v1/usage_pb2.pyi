from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Endpoint(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENDPOINT_UNSPECIFIED: _ClassVar[Endpoint]
    ENDPOINT_CHAT_COMPLETIONS: _ClassVar[Endpoint]
    ENDPOINT_COMPLETIONS: _ClassVar[Endpoint]
    ENDPOINT_EMBEDDINGS: _ClassVar[Endpoint]
    ENDPOINT_RESPONSES: _ClassVar[Endpoint]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_COMPLETED: _ClassVar[Outcome]
    OUTCOME_FAILED: _ClassVar[Outcome]
    OUTCOME_CANCELLED: _ClassVar[Outcome]
    OUTCOME_EXPIRED: _ClassVar[Outcome]
ENDPOINT_UNSPECIFIED: Endpoint
ENDPOINT_CHAT_COMPLETIONS: Endpoint
ENDPOINT_COMPLETIONS: Endpoint
ENDPOINT_EMBEDDINGS: Endpoint
ENDPOINT_RESPONSES: Endpoint
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_COMPLETED: Outcome
OUTCOME_FAILED: Outcome
OUTCOME_CANCELLED: Outcome
OUTCOME_EXPIRED: Outcome

class UsageRecord(_message.Message):
    __slots__ = ("id", "request_id", "started_unix_us", "ended_unix_us", "key_id", "tenant", "model", "endpoint", "stream", "outcome", "status", "error_code", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_pico_usd", "reserved_tokens", "reserved_micro_usd", "replica", "latency_us", "ttft_us", "requested_model")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    ENDED_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_PICO_USD_FIELD_NUMBER: _ClassVar[int]
    RESERVED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    TTFT_US_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    started_unix_us: int
    ended_unix_us: int
    key_id: str
    tenant: str
    model: str
    endpoint: Endpoint
    stream: bool
    outcome: Outcome
    status: int
    error_code: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_pico_usd: int
    reserved_tokens: int
    reserved_micro_usd: int
    replica: str
    latency_us: int
    ttft_us: int
    requested_model: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ..., started_unix_us: _Optional[int] = ..., ended_unix_us: _Optional[int] = ..., key_id: _Optional[str] = ..., tenant: _Optional[str] = ..., model: _Optional[str] = ..., endpoint: _Optional[_Union[Endpoint, str]] = ..., stream: _Optional[bool] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., status: _Optional[int] = ..., error_code: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., cost_pico_usd: _Optional[int] = ..., reserved_tokens: _Optional[int] = ..., reserved_micro_usd: _Optional[int] = ..., replica: _Optional[str] = ..., latency_us: _Optional[int] = ..., ttft_us: _Optional[int] = ..., requested_model: _Optional[str] = ...) -> None: ...
