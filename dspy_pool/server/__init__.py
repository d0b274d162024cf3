"""The gRPC edge: thin servicers over the registry, sessions, the resilience path and the pool API.

Data flow of one Execute:

    grpc.aio (one event loop) ── handlers.add_service (undecodable -> INVALID_ARGUMENT)
        └─> service.DSPyPoolService.Execute
              validate (registry: program and inputs; structs: every Value set, depth)
              └─> resilience.ResilientExecutor.execute
                    breaker permit ──none──> fallback chain (cache, static, lm, program)
                    └─> executor.Executor.execute  (session: history in, turn out)
                          └─> dspy_pool.pool.api.Pool.call(CallRequest) ──> CallResult
                    PoolError ──> errors' table decides: retry? breaker failure? fallback reason?
              <── ExecuteResponse, or status.to_grpc_status(PoolError) (code, ErrorInfo, RetryInfo)

Modules: app (assembly, start-up order, the shutdown staircase), config (the one
typed configuration), service (servicers), executor, resilience, breaker,
retry, fallback and result_cache (pure policies and their state), registry
(program versions), sessions, status (rich errors), metrics_http (Prometheus).

Nothing here builds a worker wire message or touches a worker handle: the
pool is reached through `dspy_pool.pool.api` only.
"""
