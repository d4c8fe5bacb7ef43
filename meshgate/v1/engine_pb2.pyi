from meshgate.v1 import inference_pb2 as _inference_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateChatRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.ChatCompletionRequest
    def __init__(self, request: _Optional[_Union[_inference_pb2.ChatCompletionRequest, _Mapping]] = ...) -> None: ...

class GenerateChatResponse(_message.Message):
    __slots__ = ("completion",)
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    completion: _inference_pb2.ChatCompletion
    def __init__(self, completion: _Optional[_Union[_inference_pb2.ChatCompletion, _Mapping]] = ...) -> None: ...

class StreamChatRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.ChatCompletionRequest
    def __init__(self, request: _Optional[_Union[_inference_pb2.ChatCompletionRequest, _Mapping]] = ...) -> None: ...

class GenerateTextRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.CompletionRequest
    def __init__(self, request: _Optional[_Union[_inference_pb2.CompletionRequest, _Mapping]] = ...) -> None: ...

class GenerateTextResponse(_message.Message):
    __slots__ = ("completion",)
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    completion: _inference_pb2.Completion
    def __init__(self, completion: _Optional[_Union[_inference_pb2.Completion, _Mapping]] = ...) -> None: ...

class StreamTextRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.CompletionRequest
    def __init__(self, request: _Optional[_Union[_inference_pb2.CompletionRequest, _Mapping]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.EmbeddingRequest
    def __init__(self, request: _Optional[_Union[_inference_pb2.EmbeddingRequest, _Mapping]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings",)
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _inference_pb2.EmbeddingList
    def __init__(self, embeddings: _Optional[_Union[_inference_pb2.EmbeddingList, _Mapping]] = ...) -> None: ...
