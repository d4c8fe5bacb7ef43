from google.protobuf import struct_pb2 as _struct_pb2
from meshgate.v1 import inference_pb2 as _inference_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
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
