"""Generated stubs for meshgate.gateway.v1 (see scripts/gen_protos.py)."""
