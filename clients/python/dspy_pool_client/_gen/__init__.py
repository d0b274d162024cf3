"""Generated from proto/dspy_pool/v1 by clients/python/generate.py. Do not edit."""
