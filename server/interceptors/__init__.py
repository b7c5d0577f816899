"""gRPC interceptors, one per file."""
