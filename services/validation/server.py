"""The validation service: raw JSON in, typed protobuf (and a prompt token count) out.

Shape first (is it an OpenAI request?), then the catalog (can this model serve it?),
so that everything a request can be refused for is known before quota charges it.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from meshgate import grpcio, tokens
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


class ValidationService(validation_pb2_grpc.ValidationServiceServicer):
    def __init__(self, models: catalog.Catalog) -> None:
        self._catalog = models

    async def ValidateChatCompletion(
        self, request: validation_pb2.ValidateChatCompletionRequest, context: Context
    ) -> validation_pb2.ValidateChatCompletionResponse:
        try:
            typed = validate_chat(parse_body(request.body))
            prompt_tokens = self._catalog.prepare(typed, catalog.prepare_chat)
        except Invalid as exc:
            await exc.to_api_error().abort(context)
        except ApiError as exc:
            await exc.abort(context)
        return validation_pb2.ValidateChatCompletionResponse(
            request=typed, prompt_tokens=prompt_tokens
        )

    async def ValidateCompletion(
        self, request: validation_pb2.ValidateCompletionRequest, context: Context
    ) -> validation_pb2.ValidateCompletionResponse:
        try:
            typed = validate_completion(parse_body(request.body))
            prompt_tokens = self._catalog.prepare(typed, catalog.prepare_text)
        except Invalid as exc:
            await exc.to_api_error().abort(context)
        except ApiError as exc:
            await exc.abort(context)
        return validation_pb2.ValidateCompletionResponse(request=typed, prompt_tokens=prompt_tokens)

    async def ValidateEmbedding(
        self, request: validation_pb2.ValidateEmbeddingRequest, context: Context
    ) -> validation_pb2.ValidateEmbeddingResponse:
        try:
            typed = validate_embedding(parse_body(request.body))
            prompt_tokens = self._catalog.prepare(typed, catalog.prepare_embedding)
        except Invalid as exc:
            await exc.to_api_error().abort(context)
        except ApiError as exc:
            await exc.abort(context)
        return validation_pb2.ValidateEmbeddingResponse(request=typed, prompt_tokens=prompt_tokens)

    async def ValidateResponse(
        self, request: validation_pb2.ValidateResponseRequest, context: Context
    ) -> validation_pb2.ValidateResponseResponse:
        """A Responses body, served as the chat request it translates into: the catalog's
        checks are chat's, their params named as the body's own paths."""
        try:
            translated = validate_response(parse_body(request.body))
            typed = translated.request
            try:
                prompt_tokens = self._catalog.prepare(typed, catalog.prepare_responses)
            except ApiError as exc:
                exc.param = translated.locate(exc.param)
                raise
        except Invalid as exc:
            await exc.to_api_error().abort(context)
        except ApiError as exc:
            await exc.abort(context)
        return validation_pb2.ValidateResponseResponse(
            request=typed, prompt_tokens=prompt_tokens, echo=from_dict(translated.echo)
        )


async def run(config: Config) -> None:
    tokens.encoding()  # load the tokenizer before the first request, not during it

    async def setup(server: grpc.aio.Server) -> Sequence[str]:
        validation_pb2_grpc.add_ValidationServiceServicer_to_server(
            ValidationService(catalog.Catalog(config.models)), server
        )
        return [validation_pb2.DESCRIPTOR.services_by_name["ValidationService"].full_name]

    cfg = config.services.validation
    await grpcio.serve("validation", cfg, setup, tls=config.tls)
