"""The model catalog and its semantics (BRIEF section 3).

Checks here are the ones that depend on the model: capabilities, context
length and access. Shape checks belong to the validation service.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshgate import errors
from meshgate.config import Config, ModelConfig
from meshgate.errors import ApiError
from meshgate.v1 import common_pb2, inference_pb2
from services.router import adapters
from services.router.balancer import Replica

CHAT_CATEGORIES = frozenset({"text", "code", "reasoning", "multimodal"})


@dataclass
class Model:
    config: ModelConfig
    replicas: list[Replica] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.config.id

    def has(self, capability: str) -> bool:
        return capability in self.config.capabilities

    def serving(self) -> bool:
        return any(r.healthy for r in self.replicas)

    def card(self) -> inference_pb2.ModelCard:
        c = self.config
        return inference_pb2.ModelCard(
            id=c.id,
            created=c.created,
            owned_by=c.owned_by,
            category=c.category,
            capabilities=list(c.capabilities),
            context_length=c.context_length,
        )


class Catalog:
    def __init__(self, models: list[Model]) -> None:
        self._models = {m.id: m for m in models}

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._models.values())

    def visible(self, principal: common_pb2.Principal) -> list[Model]:
        allowed = set(principal.allowed_models)
        return [
            m for m in self._models.values() if m.serving() and (not allowed or m.id in allowed)
        ]

    def resolve(self, model_id: str, principal: common_pb2.Principal) -> Model:
        """The model, if it exists, serves and the key may use it; else 404 model_not_found."""
        model = self._models.get(model_id)
        if model is None or (principal.allowed_models and model_id not in principal.allowed_models):
            raise errors.model_not_found(model_id)
        return model


def _wrong_endpoint(model: Model, endpoint: str) -> ApiError:
    return errors.invalid_request(
        f"The model `{model.id}` is a {model.config.category} model and is not supported on {endpoint}.",
        "model",
    )


def _context_exceeded(model: Model, prompt: int, completion: int) -> ApiError:
    limit = model.config.context_length
    if completion:
        message = (
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    else:
        message = (
            f"This model's maximum context length is {limit} tokens. However, your messages resulted "
            f"in {prompt} tokens. Please reduce the length of the messages."
        )
    return ApiError(
        400, "invalid_request_error", message, param="messages", code="context_length_exceeded"
    )


def prepare_chat(
    model: Model, request: inference_pb2.ChatCompletionRequest, prompt_tokens: int
) -> None:
    """Apply catalog semantics to a chat request in place, or raise the 400."""
    if model.config.category not in CHAT_CATEGORIES:
        raise _wrong_endpoint(model, "/v1/chat/completions")
    if request.tools and not model.has("tool_use"):
        raise errors.invalid_request(f"The model `{model.id}` does not support tools.", "tools")
    if not model.has("vision"):
        for i, message in enumerate(request.messages):
            if message.WhichOneof("content") != "parts":
                continue
            for j, part in enumerate(message.parts.parts):
                if part.WhichOneof("part") == "image_url":
                    raise errors.invalid_request(
                        f"The model `{model.id}` does not support image inputs.",
                        f"messages[{i}].content[{j}]",
                    )
    if (
        request.response_format.type == inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA
        and not model.has("json_schema")
    ):
        request.response_format.type = inference_pb2.ResponseFormat.TYPE_JSON_OBJECT
        request.response_format.ClearField("json_schema")
    completion = request.max_tokens if request.HasField("max_tokens") else 0
    if prompt_tokens + completion > model.config.context_length:
        raise _context_exceeded(model, prompt_tokens, completion)


def prepare_text(
    model: Model, request: inference_pb2.CompletionRequest, prompt_tokens: int
) -> None:
    if model.config.category not in CHAT_CATEGORIES:
        raise _wrong_endpoint(model, "/v1/completions")
    completion = request.max_tokens if request.HasField("max_tokens") else 16
    if prompt_tokens + completion > model.config.context_length:
        raise _context_exceeded(model, prompt_tokens, completion)


def prepare_embedding(
    model: Model, request: inference_pb2.EmbeddingRequest, prompt_tokens: int
) -> None:
    if model.config.category != "embeddings":
        raise _wrong_endpoint(model, "/v1/embeddings")
    native = model.config.dimensions
    if request.HasField("dimensions") and request.dimensions > native:
        raise errors.invalid_request(
            f"Invalid 'dimensions': the model `{model.id}` produces at most {native} dimensions.",
            "dimensions",
        )
    if not request.HasField("dimensions"):
        request.dimensions = native
    # Each input is checked on its own, as the engine embeds them separately.
    if prompt_tokens > model.config.context_length * max(1, len(request.input)):
        raise ApiError(
            400,
            "invalid_request_error",
            f"This model's maximum context length is {model.config.context_length} tokens per input.",
            param="input",
            code="context_length_exceeded",
        )


def build_catalog(config: Config) -> tuple[Catalog, list[Replica]]:
    """One Model per config entry, and the distinct replicas behind them."""
    replicas: dict[str, Replica] = {}
    models = []
    for model_config in config.models:
        chosen = []
        for engine in model_config.engines:
            key = adapters.replica_key(model_config, engine, config)
            if key not in replicas:
                replicas[key] = Replica(
                    adapters.connect(model_config, engine, config), weight=engine.weight
                )
            chosen.append(replicas[key])
        models.append(Model(model_config, chosen))
    return Catalog(models), list(replicas.values())
