from meshgate.v1 import inference_pb2 as _inference_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateChatCompletionRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.ChatCompletionRequest
    def __init__(self, request: _Optional[_Union[_inference_pb2.ChatCompletionRequest, _Mapping]] = ...) -> None: ...

class CreateChatCompletionResponse(_message.Message):
    __slots__ = ("completion",)
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    completion: _inference_pb2.ChatCompletion
    def __init__(self, completion: _Optional[_Union[_inference_pb2.ChatCompletion, _Mapping]] = ...) -> None: ...

class StreamChatCompletionRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.ChatCompletionRequest
    def __init__(self, request: _Optional[_Union[_inference_pb2.ChatCompletionRequest, _Mapping]] = ...) -> None: ...

class StreamChatCompletionResponse(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: _inference_pb2.ChatCompletionChunk
    def __init__(self, chunk: _Optional[_Union[_inference_pb2.ChatCompletionChunk, _Mapping]] = ...) -> None: ...

class CreateEmbeddingRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.EmbeddingRequest
    def __init__(self, request: _Optional[_Union[_inference_pb2.EmbeddingRequest, _Mapping]] = ...) -> None: ...

class CreateEmbeddingResponse(_message.Message):
    __slots__ = ("embeddings",)
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _inference_pb2.EmbeddingList
    def __init__(self, embeddings: _Optional[_Union[_inference_pb2.EmbeddingList, _Mapping]] = ...) -> None: ...
