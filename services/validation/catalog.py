"""The checks that depend on the model's catalog entry (BRIEF section 1, validation).

They run here, beside the shape checks and before quota judges anything, so a
request that can never succeed is a 400 (or 404) that costs the key nothing,
not a 429 that invites a retry. The router keeps only the live state: which
replicas are healthy.

Each `prepare_*` also settles what the catalog decides for the engine: the
json_schema fallback, an embedding's native dimensions, and the legacy
completion allowance; the prompt is counted after, so the count covers
what the engine will read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import orjson

from meshgate import billing, errors, tokens
from meshgate.config import ModelConfig
from meshgate.errors import ApiError
from meshgate.structs import to_dict
from meshgate.v1 import inference_pb2
from services.validation.checks import join

CHAT_CATEGORIES = frozenset({"text", "code", "reasoning", "multimodal"})
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


Request = TypeVar(
    "Request",
    inference_pb2.ChatCompletionRequest,
    inference_pb2.CompletionRequest,
    inference_pb2.EmbeddingRequest,
)
# A `prepare_*` below: apply one model's catalog entry to a request in place.
Prepare = Callable[[ModelConfig, Request], int]


class Catalog:
    """The config's models by id and alias; the key's own allowance is checked where the
    principal is known."""

    def __init__(self, models: Iterable[ModelConfig]) -> None:
        self._models = {m.id: m for m in models}
        self._names = {name: m for m in self._models.values() for name in (m.id, *m.aliases)}

    def resolve(self, name: str) -> ModelConfig:
        """The model a request names, by id or alias."""
        model = self._names.get(name)
        if model is None:
            raise errors.model_not_found(name)
        return model

    def prepare(self, request: Request, prepare: Prepare[Request]) -> int:
        """Resolve the request's model (an alias becomes the id) and apply its entry.

        A prompt too long for a model with `context_fallbacks` passes when one of its
        catalog fallbacks can take it: the router then skips the model asked for.
        """
        model = self.resolve(request.model)
        request.model = model.id
        try:
            return prepare(model, request)
        except ApiError as exc:
            if exc.code != CONTEXT_LENGTH_EXCEEDED or not model.context_fallbacks:
                raise
            for name in model.fallbacks:
                fallback = self._models[name]
                if fallback.context_length <= model.context_length:
                    continue
                try:
                    return prepare(fallback, for_model(request, name))
                except ApiError:
                    continue
            raise


def for_model(request: Request, model_id: str) -> Request:
    """A copy of a request, to be prepared for another model."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.model = model_id
    return copy


def _wrong_endpoint(model: ModelConfig, endpoint: str) -> ApiError:
    article = "an" if model.category[0] in "aeiou" else "a"
    return errors.invalid_request(
        f"The model `{model.id}` is {article} {model.category} model and is not supported on "
        f"{endpoint}.",
        "model",
    )


def _context_exceeded(message: str, param: str) -> ApiError:
    return ApiError(
        400, "invalid_request_error", message, param=param, code=CONTEXT_LENGTH_EXCEEDED
    )


def _messages_too_long(model: ModelConfig, prompt: int, completion: int) -> ApiError:
    """OpenAI's wording for chat."""
    limit = model.context_length
    if completion:
        return _context_exceeded(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the "
            "completion). Please reduce the length of the messages or completion.",
            "messages",
        )
    return _context_exceeded(
        f"This model's maximum context length is {limit} tokens. However, your messages "
        f"resulted in {prompt} tokens. Please reduce the length of the messages.",
        "messages",
    )


def _prompt_too_long(model: ModelConfig, prompt: int, completion: int, param: str) -> ApiError:
    """OpenAI's wording for the prompt-based endpoints (legacy completions, embeddings)."""
    return _context_exceeded(
        f"This model's maximum context length is {model.context_length} tokens, however you "
        f"requested {prompt + completion} tokens ({prompt} in your prompt; {completion} for the "
        "completion). Please reduce your prompt; or completion length.",
        param,
    )


def schema_instruction(format: inference_pb2.JsonSchema) -> str:
    """The system message that carries a json_schema to a model without native support.

    The page's "Partial" row sends such a request as json_object; without this the
    schema would be lost and no model could follow it.
    """
    # Sorted keys: a Struct keeps no order, and the same schema should read the same.
    schema = orjson.dumps(to_dict(format.schema), option=orjson.OPT_SORT_KEYS).decode()
    named = f" named `{format.name}`" if format.name else ""
    about = f" ({format.description})" if format.description else ""
    return (
        f"Respond with a single JSON object{named}{about} that conforms to this JSON Schema: "
        f"{schema}"
    )


def prepare_chat(
    model: ModelConfig,
    request: inference_pb2.ChatCompletionRequest,
    endpoint: str = "/v1/chat/completions",
) -> int:
    """Apply the catalog to a chat request in place; its prompt tokens, or the 400.

    `endpoint` is the route the body came to (a Responses body is served as chat)."""
    if model.category not in CHAT_CATEGORIES:
        raise _wrong_endpoint(model, endpoint)
    if request.tools and "tool_use" not in model.capabilities:
        raise errors.invalid_request(f"The model `{model.id}` does not support tools.", "tools")
    if "vision" not in model.capabilities:
        for i, message in enumerate(request.messages):
            if message.WhichOneof("content") != "parts":
                continue
            for j, part in enumerate(message.parts.parts):
                if part.WhichOneof("part") == "image_url":
                    raise errors.invalid_request(
                        f"The model `{model.id}` does not support image inputs.",
                        join(join(join("messages", i), "content"), j),
                    )
    response_format = request.response_format
    if (
        response_format.type == inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA
        and "json_schema" not in model.capabilities
    ):
        instruction = inference_pb2.ChatMessage(
            role="system", text=schema_instruction(response_format.json_schema)
        )
        request.messages.insert(0, instruction)
        response_format.type = inference_pb2.ResponseFormat.TYPE_JSON_OBJECT
        response_format.ClearField("json_schema")
    prompt = tokens.count_messages(request.messages)
    completion = request.max_tokens if request.HasField("max_tokens") else 0
    if prompt + completion > model.context_length:
        raise _messages_too_long(model, prompt, completion)
    return prompt


def prepare_responses(model: ModelConfig, request: inference_pb2.ChatCompletionRequest) -> int:
    """A Responses body's chat request: chat's rules, named for its own route."""
    return prepare_chat(model, request, "/v1/responses")


def prepare_text(model: ModelConfig, request: inference_pb2.CompletionRequest) -> int:
    """Each prompt is its own completion, so each must fit the context with its allowance."""
    if model.category not in CHAT_CATEGORIES:
        raise _wrong_endpoint(model, "/v1/completions")
    if not request.HasField("max_tokens"):
        request.max_tokens = billing.LEGACY_DEFAULT_MAX_TOKENS
    return _each_fits(model, request.prompt, request.max_tokens, "prompt")


def prepare_embedding(model: ModelConfig, request: inference_pb2.EmbeddingRequest) -> int:
    """Each input is embedded on its own, so each must fit the context: one long input
    next to short ones is refused, not averaged away."""
    if model.category != "embeddings":
        raise _wrong_endpoint(model, "/v1/embeddings")
    native = model.dimensions
    if request.HasField("dimensions") and request.dimensions > native:
        raise errors.invalid_request(
            f"Invalid 'dimensions': the model `{model.id}` produces at most {native} dimensions.",
            "dimensions",
        )
    if not request.HasField("dimensions"):
        request.dimensions = native
    return _each_fits(model, request.input, 0, "input")


def _each_fits(model: ModelConfig, texts: Sequence[str], completion: int, param: str) -> int:
    total = 0
    for i, text in enumerate(texts):
        prompt = tokens.count(text)
        if prompt + completion > model.context_length:
            raise _prompt_too_long(
                model, prompt, completion, param if len(texts) == 1 else join(param, i)
            )
        total += prompt
    return total
