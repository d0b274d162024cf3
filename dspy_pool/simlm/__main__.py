"""`python -m dspy_pool.simlm --listen 127.0.0.1:0`: run the simulated LM server."""

from dspy_pool.simlm.server import main

raise SystemExit(main())
