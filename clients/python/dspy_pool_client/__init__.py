"""dspy-pool-client: a Python client for the dspy-pool gRPC sidecar.

    from dspy_pool_client import Client
    with Client("127.0.0.1:50051") as client:
        client.register_program("qa", "question -> answer", module="chain_of_thought")
        result = client.execute("qa", {"question": "What is DSPy?"}, timeout=10)
        print(result.outputs["answer"], result.worker_pid, result.timings.total_ms)

Optimization: add_examples, start_optimization / optimize (waits, with a progress
line on a terminal), get/list/cancel/watch_optimization, set/get_execution_policy,
program_stats, execute(..., mode=...) whose result says its execution_mode, and
record_feedback on a captured call (a score, expected outputs, or both).

AsyncClient offers the same methods on grpc.aio. Errors are DSPyPoolError
subclasses carrying the status code, message and the server's ErrorInfo reason.
"""

from .aio import AsyncClient, AsyncSession
from .client import Client, Session
from .convert import (EvaluationArm, Fallback, Field, Metric, PoolStatus, ProgramInfo, ProgramMeta, Result, SessionInfo,
                      SessionTurn, Timings, Usage, WorkerInfo, from_struct, to_struct)
from .errors import (DeadlineExceeded, DSPyPoolError, FailedPrecondition, Internal, InvalidArgument, NotFound,
                     OptimizationFailed, ResourceExhausted, Unavailable, from_rpc_error)
from .optimization import (ArmStats, Budget, DatasetInfo, ExecutionPolicy, FeedbackResult, OptimizationJob,
                           OptimizationProgress, OptimizationResult, ProgramStats)
from .retry import NO_RETRIES, RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "AsyncSession", "Client", "Session", "RetryPolicy", "NO_RETRIES",
    "Result", "ProgramInfo", "SessionInfo", "SessionTurn", "PoolStatus", "WorkerInfo", "Timings", "Usage", "Field", "Fallback",
    "EvaluationArm", "ProgramMeta", "Metric", "Budget", "DatasetInfo", "OptimizationJob", "OptimizationProgress",
    "OptimizationResult", "ExecutionPolicy", "ArmStats", "ProgramStats", "FeedbackResult",
    "DSPyPoolError", "InvalidArgument", "NotFound", "ResourceExhausted", "DeadlineExceeded", "Unavailable", "Internal",
    "FailedPrecondition", "OptimizationFailed",
    "from_rpc_error", "from_struct", "to_struct",
]
