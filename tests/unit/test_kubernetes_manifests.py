"""The Kubernetes example (deploy/kubernetes) agrees with the server's defaults."""

from pathlib import Path

import pytest

from dspy_pool.server.config import ServerConfig

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse the manifests")

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "deployment.yaml"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


@pytest.fixture(scope="module")
def deployment() -> dict:
    documents = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    (deployment,) = [doc for doc in documents if doc.get("kind") == "Deployment"]
    return deployment


@pytest.fixture(scope="module")
def pod(deployment) -> dict:
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def sidecar(pod) -> dict:
    (container,) = [c for c in pod["containers"] if c["name"] == "dspy-pool"]
    return container


def _env(container: dict) -> dict:
    return {item["name"]: item for item in container.get("env", [])}


def _flag(container: dict, name: str) -> str:
    args = container["args"]
    return args[args.index(name) + 1]


def test_pod_has_the_app_and_the_sidecar(pod):
    """The pod runs an `app` container and a `dspy-pool` container from the dspy-pool image."""
    names = [c["name"] for c in pod["containers"]]
    assert names == ["app", "dspy-pool"]
    sidecar = pod["containers"][1]
    assert sidecar["image"].startswith("dspy-pool:")
    assert sidecar["args"][0] == "serve" and "--lm" in sidecar["args"]


def test_sidecar_listens_on_the_default_loopback_address(sidecar):
    """DSPY_POOL_LISTEN is the server's default listen address (loopback, shared pod network)."""
    listen = _env(sidecar)["DSPY_POOL_LISTEN"]["value"]
    assert listen == ServerConfig().server.listen
    assert _host(listen) == "127.0.0.1"


def test_app_targets_the_sidecar_port(pod, sidecar):
    """The app's DSPY_POOL_TARGET is the sidecar's listen address."""
    app = pod["containers"][0]
    assert _env(app)["DSPY_POOL_TARGET"]["value"] == _env(sidecar)["DSPY_POOL_LISTEN"]["value"]


@pytest.mark.parametrize("probe_name", PROBES)
def test_probes_check_the_health_service_on_the_listen_port(sidecar, probe_name):
    """Each probe hits the gRPC health service on the port and host the server listens on."""
    probe = sidecar[probe_name]
    listen = _env(sidecar)["DSPY_POOL_LISTEN"]["value"]
    default_port = _port(ServerConfig().server.listen)
    if "grpc" in probe:
        # Native gRPC probes go to the pod IP: a loopback listener would never answer.
        assert probe["grpc"]["port"] == default_port
        assert _host(listen) in ("0.0.0.0", "[::]"), "native grpc probes need the server on the pod IP"
    else:
        command = probe["exec"]["command"]
        assert command[:2] == ["dspy-pool", "probe"]
        target = command[command.index("--target") + 1]
        assert _port(target) == default_port
        assert target == listen


def test_api_key_comes_from_a_secret(sidecar):
    """The LM key is read from a Secret, never written in the manifest or passed as a flag."""
    key = _env(sidecar)["DSPY_POOL_LM_API_KEY"]
    assert "value" not in key
    assert key["valueFrom"]["secretKeyRef"]["name"]
    assert not any("api-key" in arg or "sk-" in arg for arg in sidecar["args"])


def test_grace_period_covers_the_drain(pod, sidecar):
    """terminationGracePeriodSeconds exceeds preStop plus the drain grace, with room to stop workers."""
    drain = float(_flag(sidecar, "--drain-grace-s")) if "--drain-grace-s" in sidecar["args"] else ServerConfig().server.drain_grace_s
    assert drain >= ServerConfig().server.drain_grace_s
    pre_stop = sidecar.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_s = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + drain
    assert pod["terminationGracePeriodSeconds"] > ServerConfig().server.drain_grace_s


def test_metrics_port_is_annotated_for_prometheus(deployment, sidecar):
    """prometheus.io annotations name the port the server exports metrics on, reachable on the pod IP."""
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    port = int(annotations["prometheus.io/port"])
    assert int(_flag(sidecar, "--metrics-port")) == port
    assert _flag(sidecar, "--metrics-addr") == "0.0.0.0"
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in sidecar["ports"]


def test_sidecar_has_requests_and_limits(sidecar):
    """CPU and memory requests are set, and a memory limit above the request."""
    resources = sidecar["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_manifest_args_parse_as_server_flags(sidecar):
    """The sidecar's args after `serve` parse with the server's own flag definitions."""
    import argparse

    from dspy_pool.server.config import add_flags

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_flags(parser)
    args, unknown = parser.parse_known_args(sidecar["args"][1:])
    assert not unknown, f"flags the server does not define: {unknown}"
    assert int(args.metrics_port) == 9090
