# syntax=docker/dockerfile:1
#
# dspy-pool server image.
#
#   docker build -t dspy-pool .
#   docker run --init --rm -p 50051:50051 --stop-timeout 20 -v dspy-pool-state:/var/lib/dspy-pool dspy-pool
#   docker run --init --rm -p 50051:50051 -e DSPY_POOL_LM_API_KEY=... dspy-pool serve --lm openai/gpt-4o-mini
#
# The API key comes from the environment (DSPY_POOL_LM_API_KEY) only; there is
# no flag for it, so it never shows in `ps` or in the image's CMD.

# ---- builder: the project's wheel and wheels of all its dependencies --------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is built from, so edits to tests or docs do not rebuild
# it. README.m[d] is a glob so the COPY still works while README.md is absent.
COPY pyproject.toml README.m[d] ./
COPY dspy_pool ./dspy_pool

# Dependencies are built (or downloaded) here too, so the runtime stage installs
# offline from /wheels and needs no compiler or network.
RUN pip wheel --wheel-dir /wheels .

# ---- runtime -----------------------------------------------------------------
FROM python:3.11-slim AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels dspy-pool

# Non-root; a real home directory because DSPy keeps its disk cache under ~.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/dspy dspy

# The state store (programs, sessions, cached results: --state sqlite, the
# default) lives in a volume, so it outlives the container: a replaced
# container starts with every program registered and warm. Created and chowned
# before VOLUME, because a named volume is seeded from the image's directory
# (ownership included) and the non-root server must be able to write there.
# A host bind mount keeps the host's ownership: make it writable by uid 10001.
RUN install --directory --owner=dspy --group=dspy --mode=0750 /var/lib/dspy-pool
ENV DSPY_POOL_STATE_DIR=/var/lib/dspy-pool
VOLUME /var/lib/dspy-pool

USER dspy
WORKDIR /home/dspy

# The default (127.0.0.1:50051) is right on a host but unreachable from outside
# a container: inside one the server must listen on all interfaces for
# `-p 50051:50051` to reach it. Override with DSPY_POOL_LISTEN or --listen;
# the HEALTHCHECK below assumes port 50051.
ENV DSPY_POOL_LISTEN=0.0.0.0:50051
EXPOSE 50051

# Healthy only once the gRPC health service says SERVING (workers booted, not
# draining, no crash loop). The start period covers `import dspy` plus worker
# boot (boot_timeout_s defaults to 60).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["dspy-pool", "probe", "--target", "127.0.0.1:50051"]

# Run with `docker run --init` (or tini): the front is PID 1, and an init
# reaps any worker orphaned if the zygote dies. Give `docker stop` more than
# drain_grace_s (10 s by default), e.g. --stop-timeout 20, so SIGTERM can
# drain in-flight calls before Docker's SIGKILL.
ENTRYPOINT ["dspy-pool"]
CMD ["serve", "--lm", "sim"]
