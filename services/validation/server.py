"""The validation service: raw JSON in, typed protobuf (and a prompt token count) out.

Shape first (is it an OpenAI request?), then the catalog (can this model serve it?),
so that everything a request can be refused for is known before quota charges it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc

from meshgate import errors, grpcio, logs, tokens
from meshgate.config import Config
from meshgate.errors import ApiError
from meshgate.grpcio import Context
from meshgate.structs import from_dict
from meshgate.v1 import validation_pb2, validation_pb2_grpc
from services.validation import catalog
from services.validation.chat import validate_chat
from services.validation.checks import Invalid, parse_body
from services.validation.completions import validate_completion
from services.validation.embeddings import validate_embedding
from services.validation.responses import validate_response

Q = TypeVar("Q")
A = TypeVar("A")


class ValidationService(validation_pb2_grpc.ValidationServiceServicer):
    """Each check is a plain function of the body that raises ApiError, named after its
    ValidateManyItem field (`chat_completion`, `completion`, `embedding`, `response`), which
    is how ValidateMany finds it; the RPCs only carry it, alone or many at once."""

    def __init__(self, models: catalog.Catalog) -> None:
        self._catalog = models

    def chat_completion(
        self, request: validation_pb2.ValidateChatCompletionRequest
    ) -> validation_pb2.ValidateChatCompletionResponse:
        typed = validate_chat(parse_body(request.body))
        prompt_tokens = self._catalog.prepare(typed, catalog.prepare_chat)
        return validation_pb2.ValidateChatCompletionResponse(
            request=typed, prompt_tokens=prompt_tokens
        )

    def completion(
        self, request: validation_pb2.ValidateCompletionRequest
    ) -> validation_pb2.ValidateCompletionResponse:
        typed = validate_completion(parse_body(request.body))
        prompt_tokens = self._catalog.prepare(typed, catalog.prepare_text)
        return validation_pb2.ValidateCompletionResponse(request=typed, prompt_tokens=prompt_tokens)

    def embedding(
        self, request: validation_pb2.ValidateEmbeddingRequest
    ) -> validation_pb2.ValidateEmbeddingResponse:
        typed = validate_embedding(parse_body(request.body))
        prompt_tokens = self._catalog.prepare(typed, catalog.prepare_embedding)
        return validation_pb2.ValidateEmbeddingResponse(request=typed, prompt_tokens=prompt_tokens)

    def response(
        self, request: validation_pb2.ValidateResponseRequest
    ) -> validation_pb2.ValidateResponseResponse:
        """A Responses body, served as the chat request it translates into: the catalog's
        checks are chat's, their params named as the body's own paths."""
        translated = validate_response(parse_body(request.body))
        typed = translated.request
        try:
            prompt_tokens = self._catalog.prepare(typed, catalog.prepare_responses)
        except ApiError as exc:
            exc.param = translated.locate(exc.param)
            raise
        return validation_pb2.ValidateResponseResponse(
            request=typed, prompt_tokens=prompt_tokens, echo=from_dict(translated.echo)
        )

    async def ValidateChatCompletion(
        self, request: validation_pb2.ValidateChatCompletionRequest, context: Context
    ) -> validation_pb2.ValidateChatCompletionResponse:
        return await _answer(self.chat_completion, request, context)

    async def ValidateCompletion(
        self, request: validation_pb2.ValidateCompletionRequest, context: Context
    ) -> validation_pb2.ValidateCompletionResponse:
        return await _answer(self.completion, request, context)

    async def ValidateEmbedding(
        self, request: validation_pb2.ValidateEmbeddingRequest, context: Context
    ) -> validation_pb2.ValidateEmbeddingResponse:
        return await _answer(self.embedding, request, context)

    async def ValidateResponse(
        self, request: validation_pb2.ValidateResponseRequest, context: Context
    ) -> validation_pb2.ValidateResponseResponse:
        return await _answer(self.response, request, context)

    async def ValidateMany(
        self, request: validation_pb2.ValidateManyRequest, context: Context
    ) -> validation_pb2.ValidateManyResponse:
        answer = validation_pb2.ValidateManyResponse()
        for item in request.items:
            kind = item.WhichOneof("body")
            result = answer.results.add()
            token = logs.request_id.set(item.request_id)
            try:
                if kind is None:
                    raise errors.invalid_request("The item names no body.", None)
                body = getattr(item, kind)
                getattr(result, kind).CopyFrom(getattr(self, kind)(body))
            except Invalid as exc:
                result.error.CopyFrom(exc.to_api_error().to_proto())
            except ApiError as exc:
                result.error.CopyFrom(exc.to_proto())
            finally:
                logs.request_id.reset(token)
        return answer


async def _answer(check: Callable[[Q], A], request: Q, context: Context) -> A:
    """One body's answer, or its refusal as the call's status."""
    try:
        return check(request)
    except Invalid as exc:
        await exc.to_api_error().abort(context)
    except ApiError as exc:
        await exc.abort(context)


async def run(config: Config) -> None:
    tokens.encoding()  # load the tokenizer before the first request, not during it

    async def setup(server: grpc.aio.Server) -> Sequence[str]:
        validation_pb2_grpc.add_ValidationServiceServicer_to_server(
            ValidationService(catalog.Catalog(config.models)), server
        )
        return [validation_pb2.DESCRIPTOR.services_by_name["ValidationService"].full_name]

    cfg = config.services.validation
    await grpcio.serve("validation", cfg, setup, tls=config.tls)
