"""dspy-pool: serve DSPy programs over gRPC from a pool of prewarmed worker processes."""

__version__ = "0.1.0"
