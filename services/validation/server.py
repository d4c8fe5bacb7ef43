"""The validation service: raw JSON in, typed protobuf (and a prompt token count) out."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from meshgate import grpcio, tokens
from meshgate.config import Config
from meshgate.grpcio import Context
from meshgate.v1 import validation_pb2, validation_pb2_grpc
from services.validation.chat import validate_chat
from services.validation.checks import Invalid, parse_body
from services.validation.completions import validate_completion
from services.validation.embeddings import validate_embedding


class ValidationService(validation_pb2_grpc.ValidationServiceServicer):
    async def ValidateChatCompletion(
        self, request: validation_pb2.ValidateChatCompletionRequest, context: Context
    ) -> validation_pb2.ValidateChatCompletionResponse:
        try:
            typed = validate_chat(parse_body(request.body))
        except Invalid as exc:
            await exc.to_api_error().abort(context)
        return validation_pb2.ValidateChatCompletionResponse(
            request=typed, prompt_tokens=tokens.count_messages(typed.messages)
        )

    async def ValidateCompletion(
        self, request: validation_pb2.ValidateCompletionRequest, context: Context
    ) -> validation_pb2.ValidateCompletionResponse:
        try:
            typed = validate_completion(parse_body(request.body))
        except Invalid as exc:
            await exc.to_api_error().abort(context)
        return validation_pb2.ValidateCompletionResponse(
            request=typed, prompt_tokens=sum(tokens.count(p) for p in typed.prompt)
        )

    async def ValidateEmbedding(
        self, request: validation_pb2.ValidateEmbeddingRequest, context: Context
    ) -> validation_pb2.ValidateEmbeddingResponse:
        try:
            typed = validate_embedding(parse_body(request.body))
        except Invalid as exc:
            await exc.to_api_error().abort(context)
        return validation_pb2.ValidateEmbeddingResponse(
            request=typed, prompt_tokens=sum(tokens.count(t) for t in typed.input)
        )


async def run(config: Config) -> None:
    tokens.encoding()  # load the tokenizer before the first request, not during it

    async def setup(server: grpc.aio.Server) -> Sequence[str]:
        validation_pb2_grpc.add_ValidationServiceServicer_to_server(ValidationService(), server)
        return [validation_pb2.DESCRIPTOR.services_by_name["ValidationService"].full_name]

    cfg = config.services.validation
    await grpcio.serve("validation", cfg, setup, tls=config.tls)
