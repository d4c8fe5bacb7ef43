"""Generated protobuf and gRPC stubs for meshgate.v1 (see scripts/gen_protos.py)."""
