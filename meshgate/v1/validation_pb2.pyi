from google.protobuf import struct_pb2 as _struct_pb2
from meshgate.v1 import common_pb2 as _common_pb2
from meshgate.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ValidateChatCompletionRequest(_message.Message):
    __slots__ = ("body",)
    BODY_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    def __init__(self, body: _Optional[bytes] = ...) -> None: ...

class ValidateChatCompletionResponse(_message.Message):
    __slots__ = ("request", "prompt_tokens")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.ChatCompletionRequest
    prompt_tokens: int
    def __init__(self, request: _Optional[_Union[_inference_pb2.ChatCompletionRequest, _Mapping]] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class ValidateCompletionRequest(_message.Message):
    __slots__ = ("body",)
    BODY_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    def __init__(self, body: _Optional[bytes] = ...) -> None: ...

class ValidateCompletionResponse(_message.Message):
    __slots__ = ("request", "prompt_tokens")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.CompletionRequest
    prompt_tokens: int
    def __init__(self, request: _Optional[_Union[_inference_pb2.CompletionRequest, _Mapping]] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class ValidateEmbeddingRequest(_message.Message):
    __slots__ = ("body",)
    BODY_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    def __init__(self, body: _Optional[bytes] = ...) -> None: ...

class ValidateEmbeddingResponse(_message.Message):
    __slots__ = ("request", "prompt_tokens")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.EmbeddingRequest
    prompt_tokens: int
    def __init__(self, request: _Optional[_Union[_inference_pb2.EmbeddingRequest, _Mapping]] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class ValidateResponseRequest(_message.Message):
    __slots__ = ("body",)
    BODY_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    def __init__(self, body: _Optional[bytes] = ...) -> None: ...

class ValidateResponseResponse(_message.Message):
    __slots__ = ("request", "prompt_tokens", "echo")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ECHO_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.ChatCompletionRequest
    prompt_tokens: int
    echo: _struct_pb2.Struct
    def __init__(self, request: _Optional[_Union[_inference_pb2.ChatCompletionRequest, _Mapping]] = ..., prompt_tokens: _Optional[int] = ..., echo: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ValidateManyRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ValidateManyItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ValidateManyItem, _Mapping]]] = ...) -> None: ...

class ValidateManyItem(_message.Message):
    __slots__ = ("request_id", "chat_completion", "completion", "embedding", "response")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHAT_COMPLETION_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    chat_completion: ValidateChatCompletionRequest
    completion: ValidateCompletionRequest
    embedding: ValidateEmbeddingRequest
    response: ValidateResponseRequest
    def __init__(self, request_id: _Optional[str] = ..., chat_completion: _Optional[_Union[ValidateChatCompletionRequest, _Mapping]] = ..., completion: _Optional[_Union[ValidateCompletionRequest, _Mapping]] = ..., embedding: _Optional[_Union[ValidateEmbeddingRequest, _Mapping]] = ..., response: _Optional[_Union[ValidateResponseRequest, _Mapping]] = ...) -> None: ...

class ValidateManyResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ValidateManyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ValidateManyResult, _Mapping]]] = ...) -> None: ...

class ValidateManyResult(_message.Message):
    __slots__ = ("chat_completion", "completion", "embedding", "response", "error")
    CHAT_COMPLETION_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    chat_completion: ValidateChatCompletionResponse
    completion: ValidateCompletionResponse
    embedding: ValidateEmbeddingResponse
    response: ValidateResponseResponse
    error: _common_pb2.Error
    def __init__(self, chat_completion: _Optional[_Union[ValidateChatCompletionResponse, _Mapping]] = ..., completion: _Optional[_Union[ValidateCompletionResponse, _Mapping]] = ..., embedding: _Optional[_Union[ValidateEmbeddingResponse, _Mapping]] = ..., response: _Optional[_Union[ValidateResponseResponse, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ...) -> None: ...
