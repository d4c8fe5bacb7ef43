from meshgate.v1 import usage_pb2 as _usage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dimension(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIMENSION_UNSPECIFIED: _ClassVar[Dimension]
    DIMENSION_KEY: _ClassVar[Dimension]
    DIMENSION_TENANT: _ClassVar[Dimension]
    DIMENSION_MODEL: _ClassVar[Dimension]

class Bucket(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUCKET_UNSPECIFIED: _ClassVar[Bucket]
    BUCKET_HOUR: _ClassVar[Bucket]
    BUCKET_DAY: _ClassVar[Bucket]
DIMENSION_UNSPECIFIED: Dimension
DIMENSION_KEY: Dimension
DIMENSION_TENANT: Dimension
DIMENSION_MODEL: Dimension
BUCKET_UNSPECIFIED: Bucket
BUCKET_HOUR: Bucket
BUCKET_DAY: Bucket

class UsageFilter(_message.Message):
    __slots__ = ("key_id", "tenant", "model", "since_unix_us", "until_unix_us")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    tenant: str
    model: str
    since_unix_us: int
    until_unix_us: int
    def __init__(self, key_id: _Optional[str] = ..., tenant: _Optional[str] = ..., model: _Optional[str] = ..., since_unix_us: _Optional[int] = ..., until_unix_us: _Optional[int] = ...) -> None: ...

class SummarizeUsageRequest(_message.Message):
    __slots__ = ("filter", "group_by", "bucket")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    filter: UsageFilter
    group_by: _containers.RepeatedScalarFieldContainer[Dimension]
    bucket: Bucket
    def __init__(self, filter: _Optional[_Union[UsageFilter, _Mapping]] = ..., group_by: _Optional[_Iterable[_Union[Dimension, str]]] = ..., bucket: _Optional[_Union[Bucket, str]] = ...) -> None: ...

class UsageSummaryRow(_message.Message):
    __slots__ = ("key_id", "tenant", "model", "bucket_start_unix_us", "requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd", "errors")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BUCKET_START_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    tenant: str
    model: str
    bucket_start_unix_us: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: str
    errors: int
    def __init__(self, key_id: _Optional[str] = ..., tenant: _Optional[str] = ..., model: _Optional[str] = ..., bucket_start_unix_us: _Optional[int] = ..., requests: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., cost_usd: _Optional[str] = ..., errors: _Optional[int] = ...) -> None: ...

class SummarizeUsageResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[UsageSummaryRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[UsageSummaryRow, _Mapping]]] = ...) -> None: ...

class ListUsageRecordsRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: UsageFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[UsageFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListUsageRecordsResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[_usage_pb2.UsageRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[_usage_pb2.UsageRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
