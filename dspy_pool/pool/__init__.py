"""The worker pool: processes forked from a zygote, behind one narrow API (`dspy_pool.pool.api`).

Data flow of one call:

    server/ ── Pool.call(CallRequest) ──> Job(WorkRequest) ──> Dispatcher
                                              | a ready worker with a free slot? else the bounded queue
                                              v
                                         WorkerHandle ── REQUEST frame (socketpair) ──> worker process
                                                                                          asyncio loop, N calls at once
                                                                                          build (cached) -> module.acall -> dspy.LM
                                         WorkerHandle <── REPLY / ERROR frame ────────────┘
    server/ <── CallResult / PoolError ── Job.complete

Processes:

    front (this process) ──exec──> zygote (imports dspy and the operator's --programs once)
           │  SPAWN + 3 fds over a SOCK_SEQPACKET pair        │ os.fork()
           └──────────────<── SPAWNED(pid), EXITED(pid, code) ┴──> worker, worker, ...

Modules: api (the only thing server/ imports to run calls), dispatcher (queue,
deadlines, routing), handle (the front's view of one worker: frames, pings,
death), supervisor (spawn, replace, drain, stop; the arbiter), spawner and
zygote (processes), worker and programs (the child side), warmup (build and
warm a joining worker), scaler (pure sizing policy), controller (drives the
scaler and recycling), metrics (what the controller and Prometheus read),
protocol (frames), failures (exception -> error kind, in the worker).

Failure is per worker: a crash fails only that worker's calls (never retried:
they may have run), the supervisor replaces it, and a run of boot failures
stops respawning (crash_loop_detected) instead of spinning.
"""
