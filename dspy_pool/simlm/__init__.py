"""A simulated LM: deterministic answers to any DSPy signature, with faults.

`answer` turns a chat into the text DSPy's adapters parse (pure); `faults`
decides per request whether to fail and how slowly to answer (pure);
`server` serves both over OpenAI-compatible HTTP for tests, the demo and
benchmarks; `engine` answers in process, without HTTP, so `--lm dummy`
measures only the pool's own overhead.
"""

from dspy_pool.simlm.answer import complete, count_tokens
from dspy_pool.simlm.faults import FaultConfig, Outcome, decide, sample_latency_s
from dspy_pool.simlm.server import SimLMServer, main

__all__ = [
    "FaultConfig",
    "Outcome",
    "SimLMServer",
    "complete",
    "count_tokens",
    "decide",
    "main",
    "sample_latency_s",
]
