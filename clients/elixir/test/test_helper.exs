# Integration tests need a running server: DSPY_POOL_TARGET=127.0.0.1:50051 mix test --include integration
ExUnit.start(exclude: [:integration])
