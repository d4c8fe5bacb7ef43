"""meshgate.gateway: the gRPC front door for internal consumers."""
