"""Several front processes on one port (--front-processes N): the plan each is given, the process, the supervisor."""
