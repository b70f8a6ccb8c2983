"""The gRPC server: servicers (adapters), interceptors, auth, metrics, shared buffers, serve."""
