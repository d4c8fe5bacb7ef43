"""Call meshgate over gRPC from an internal service, and stream the answer.

    python examples/grpc_client.py --target 127.0.0.1:50050 --key sk-... "Tell me a story"

The edge serves `meshgate.gateway.v1.GatewayService` on `edge.grpc_port`. The
key goes in `authorization` metadata, as over HTTP. A failure is a gRPC status
whose details hold the OpenAI error (meshgate.v1.Error): the same type, param
and code that an HTTP client would see.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from google.rpc import status_pb2

from meshgate.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshgate.v1 import common_pb2, inference_pb2


def openai_error(exc: grpc.RpcError) -> common_pb2.Error | None:
    """The OpenAI error inside a failed call's status details."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                error = common_pb2.Error()
                if detail.Unpack(error):
                    return error
    return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompt")
    parser.add_argument("--target", default="127.0.0.1:50050")
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", default="meshgate/reference-pro")
    args = parser.parse_args()

    with grpc.insecure_channel(args.target) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        request = gateway_pb2.StreamChatCompletionRequest(
            request=inference_pb2.ChatCompletionRequest(
                model=args.model,
                messages=[inference_pb2.ChatMessage(role="user", text=args.prompt)],
                max_tokens=64,
            )
        )
        try:
            for response in gateway.StreamChatCompletion(
                request, metadata=(("authorization", f"Bearer {args.key}"),), timeout=60
            ):
                for choice in response.chunk.choices:
                    sys.stdout.write(choice.delta.content)
                if response.chunk.HasField("usage"):
                    usage = response.chunk.usage
                    sys.stdout.write(
                        f"\n[{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens]\n"
                    )
        except grpc.RpcError as exc:
            error = openai_error(exc)
            code = exc.code().name
            if error is None:
                print(f"error: {code}", file=sys.stderr)
            else:
                print(
                    f"error: {code} {error.http_status} {error.type} {error.code or ''}: {error.message}",
                    file=sys.stderr,
                )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
