from meshgate.v1 import common_pb2 as _common_pb2
from meshgate.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignalState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNAL_STATE_UNSPECIFIED: _ClassVar[SignalState]
    SIGNAL_STATE_NONE: _ClassVar[SignalState]
    SIGNAL_STATE_FRESH: _ClassVar[SignalState]
    SIGNAL_STATE_STALE: _ClassVar[SignalState]
    SIGNAL_STATE_MISSING: _ClassVar[SignalState]
SIGNAL_STATE_UNSPECIFIED: SignalState
SIGNAL_STATE_NONE: SignalState
SIGNAL_STATE_FRESH: SignalState
SIGNAL_STATE_STALE: SignalState
SIGNAL_STATE_MISSING: SignalState

class CreateChatCompletionRequest(_message.Message):
    __slots__ = ("request", "context")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.ChatCompletionRequest
    context: _common_pb2.RequestContext
    def __init__(self, request: _Optional[_Union[_inference_pb2.ChatCompletionRequest, _Mapping]] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ...) -> None: ...

class CreateChatCompletionResponse(_message.Message):
    __slots__ = ("completion",)
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    completion: _inference_pb2.ChatCompletion
    def __init__(self, completion: _Optional[_Union[_inference_pb2.ChatCompletion, _Mapping]] = ...) -> None: ...

class StreamChatCompletionRequest(_message.Message):
    __slots__ = ("request", "context")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.ChatCompletionRequest
    context: _common_pb2.RequestContext
    def __init__(self, request: _Optional[_Union[_inference_pb2.ChatCompletionRequest, _Mapping]] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ...) -> None: ...

class CreateCompletionRequest(_message.Message):
    __slots__ = ("request", "context")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.CompletionRequest
    context: _common_pb2.RequestContext
    def __init__(self, request: _Optional[_Union[_inference_pb2.CompletionRequest, _Mapping]] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ...) -> None: ...

class CreateCompletionResponse(_message.Message):
    __slots__ = ("completion",)
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    completion: _inference_pb2.Completion
    def __init__(self, completion: _Optional[_Union[_inference_pb2.Completion, _Mapping]] = ...) -> None: ...

class StreamCompletionRequest(_message.Message):
    __slots__ = ("request", "context")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.CompletionRequest
    context: _common_pb2.RequestContext
    def __init__(self, request: _Optional[_Union[_inference_pb2.CompletionRequest, _Mapping]] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ...) -> None: ...

class CreateEmbeddingRequest(_message.Message):
    __slots__ = ("request", "context")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    request: _inference_pb2.EmbeddingRequest
    context: _common_pb2.RequestContext
    def __init__(self, request: _Optional[_Union[_inference_pb2.EmbeddingRequest, _Mapping]] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ...) -> None: ...

class CreateEmbeddingResponse(_message.Message):
    __slots__ = ("embeddings",)
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _inference_pb2.EmbeddingList
    def __init__(self, embeddings: _Optional[_Union[_inference_pb2.EmbeddingList, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("context",)
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    context: _common_pb2.RequestContext
    def __init__(self, context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_inference_pb2.ModelCard]
    def __init__(self, models: _Optional[_Iterable[_Union[_inference_pb2.ModelCard, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("id", "context")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    context: _common_pb2.RequestContext
    def __init__(self, id: _Optional[str] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _inference_pb2.ModelCard
    def __init__(self, model: _Optional[_Union[_inference_pb2.ModelCard, _Mapping]] = ...) -> None: ...

class ListModelReplicasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaHealth(_message.Message):
    __slots__ = ("target", "healthy", "outstanding", "failed_checks", "ejections", "weight", "max_concurrency", "signals", "score")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    FAILED_CHECKS_FIELD_NUMBER: _ClassVar[int]
    EJECTIONS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    target: str
    healthy: bool
    outstanding: int
    failed_checks: int
    ejections: int
    weight: int
    max_concurrency: int
    signals: EngineSignals
    score: float
    def __init__(self, target: _Optional[str] = ..., healthy: _Optional[bool] = ..., outstanding: _Optional[int] = ..., failed_checks: _Optional[int] = ..., ejections: _Optional[int] = ..., weight: _Optional[int] = ..., max_concurrency: _Optional[int] = ..., signals: _Optional[_Union[EngineSignals, _Mapping]] = ..., score: _Optional[float] = ...) -> None: ...

class EngineSignals(_message.Message):
    __slots__ = ("state", "kind", "waiting", "running", "kv_cache_usage", "slots", "busy_slots", "age_seconds", "error")
    STATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    BUSY_SLOTS_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    state: SignalState
    kind: str
    waiting: float
    running: float
    kv_cache_usage: float
    slots: int
    busy_slots: int
    age_seconds: float
    error: str
    def __init__(self, state: _Optional[_Union[SignalState, str]] = ..., kind: _Optional[str] = ..., waiting: _Optional[float] = ..., running: _Optional[float] = ..., kv_cache_usage: _Optional[float] = ..., slots: _Optional[int] = ..., busy_slots: _Optional[int] = ..., age_seconds: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class ModelReplicas(_message.Message):
    __slots__ = ("model", "serving", "replicas", "decisions")
    class DecisionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    model: _inference_pb2.ModelCard
    serving: bool
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaHealth]
    decisions: _containers.ScalarMap[str, int]
    def __init__(self, model: _Optional[_Union[_inference_pb2.ModelCard, _Mapping]] = ..., serving: _Optional[bool] = ..., replicas: _Optional[_Iterable[_Union[ReplicaHealth, _Mapping]]] = ..., decisions: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ListModelReplicasResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelReplicas]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelReplicas, _Mapping]]] = ...) -> None: ...
