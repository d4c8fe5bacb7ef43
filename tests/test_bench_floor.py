"""bench/floor.py against real processes: the floors every goal of the benchmark is
measured in must come out as measurements (positive, in the right order), not zeros."""

from __future__ import annotations

from bench import floor


def test_floors_of_a_round_trip_and_of_a_stream_message() -> None:
    measured = floor.probe_floor()
    grpc_hop, tcp = measured["grpc_unary"], measured["asyncio_tcp"]
    assert 0 < tcp["cpu_us"] < grpc_hop["cpu_us"], measured  # gRPC's machinery costs more
    assert 0 < tcp["p50_us"] < grpc_hop["p50_us"], measured
    message = floor.probe_stream_floor()
    # Every stream got all its messages at the paced rate (64 streams, one per 20 ms each).
    wanted = floor.STREAMS / floor.STREAM_GAP_S
    assert 0.5 * wanted < message["messages_per_s"] <= 1.05 * wanted, message
    # One streamed message is far cheaper than a whole call, and not free.
    assert 0 < message["cpu_us"] < grpc_hop["cpu_us"], (message, grpc_hop)
