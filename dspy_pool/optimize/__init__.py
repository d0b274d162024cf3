"""Optimizing programs in the background and serving the best version.

    AddExamples / RecordFeedback ──> datasets (state store)
    StartOptimization ──> jobs.JobManager: validate (catalog), dedupe, queue by priority (state store)
                              └──> an optimizer worker (forked from the zygote, niced, its own LM-call cap)
                                     runner.run(OptimizeTask): DSPy's real optimizer, metric (metrics),
                                     budget and cancel enforced; progress frames back
                          <── OptimizeResult: a new program version (saved state), provenance and dev scores
    promotion (promotion.py, pure) ──> the program's ExecutionPolicy (state store)
    Execute ──> routing.py (pure): traditional | optimized | hybrid (sticky per session) | evaluation

Modules that import DSPy (runner, metrics) run only in optimizer workers; the
front uses the pure ones (task, catalog, routing, promotion, triggers).
"""
