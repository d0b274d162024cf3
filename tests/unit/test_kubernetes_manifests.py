"""The Kubernetes examples (deploy/kubernetes) and the Dockerfile agree with the server's config.

Pure parsing, no cluster. The checks before the first `# --` section, and the programs
checks, run against both examples (deployment.yaml: one pod, SQLite on a volume;
multi-replica.yaml: several pods sharing Redis); the rest check what only one of them, or
the image, promises.
"""

import argparse
import json
import shlex
import urllib.parse
from pathlib import Path, PurePosixPath

import pytest

from dspy_pool.server import config as config_module
from dspy_pool.server.config import ServerConfig

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse the manifests")

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "deployment.yaml"
MULTI_REPLICA = ROOT / "deploy" / "kubernetes" / "multi-replica.yaml"
DOCKERFILE = ROOT / "Dockerfile"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
BUILTIN_KINDS = ["predict", "chain_of_thought"]
REDIS_DEFAULT_PORT = 6379


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _app_deployment(documents: list[dict]) -> dict:
    """The one Deployment whose pod runs the dspy-pool sidecar."""
    (deployment,) = [doc for doc in _of_kind(documents, "Deployment")
                     if any(c["name"] == "dspy-pool" for c in doc["spec"]["template"]["spec"]["containers"])]
    return deployment


def _of_kind(documents: list[dict], kind: str) -> list[dict]:
    return [doc for doc in documents if doc.get("kind") == kind]


def _named(documents: list[dict], kind: str, name: str) -> dict:
    (document,) = [doc for doc in _of_kind(documents, kind) if doc["metadata"]["name"] == name]
    return document


@pytest.fixture(scope="module", params=[MANIFEST, MULTI_REPLICA], ids=lambda path: path.name)
def deployment(request) -> dict:
    return _app_deployment(_documents(request.param))


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


# -- what the server and the image make of a manifest ----------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile's last stage, continuation lines joined."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, even inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        pending = ""
        instructions.append((keyword.upper(), rest.strip()))
    last_from = max(index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in _dockerfile_instructions():
        if keyword == "ENV":
            words = shlex.split(rest)
            if "=" in words[0]:
                env.update(word.split("=", 1) for word in words)
            else:  # the legacy form: ENV KEY value
                env[words[0]] = " ".join(words[1:])
    return env


def _image_volumes() -> list[str]:
    volumes: list[str] = []
    for keyword, rest in _dockerfile_instructions():
        if keyword == "VOLUME":
            volumes += json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return volumes


def _server_config(container: dict) -> ServerConfig:
    """The config the sidecar's server builds: the image's ENV, then the container's env, then its flags."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    config_module.add_flags(parser, environ={})
    args = parser.parse_args(container["args"][1:])
    env = {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
    return config_module.load(args, {**_image_env(), **env})


def _pod(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def _container(pod: dict, name: str) -> dict:
    (container,) = [c for c in pod["containers"] if c["name"] == name]
    return container


def _mount_holding(container: dict, path: str) -> dict | None:
    """The volumeMount whose mountPath is `path` or the closest folder above it."""
    holding = [m for m in container.get("volumeMounts", [])
               if PurePosixPath(path) == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in PurePosixPath(path).parents]
    return max(holding, key=lambda m: len(PurePosixPath(m["mountPath"]).parts), default=None)


def _volume(pod: dict, name: str) -> dict:
    (volume,) = [v for v in pod.get("volumes", []) if v["name"] == name]
    return volume


def _programs_text(documents: list[dict]) -> tuple[str, str]:
    """(file name, text) of the programs file the sidecar's --programs-file reads from its ConfigMap."""
    pod = _pod(_app_deployment(documents))
    sidecar = _container(pod, "dspy-pool")
    path = _server_config(sidecar).state.programs_file
    mount = _mount_holding(sidecar, path)
    assert mount is not None, f"--programs-file {path} is on no mounted volume"
    source = _volume(pod, mount["name"])["configMap"]
    relative = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    keys = {item["path"]: item["key"] for item in source.get("items", [])}
    configmap = _named(documents, "ConfigMap", source["name"])
    return PurePosixPath(path).name, configmap["data"][keys.get(relative, relative)]


def _after(args: list[str], flag: str, default: str) -> str:
    return args[args.index(flag) + 1] if flag in args else default


# -- both examples: programs from a ConfigMap --------------------------------------------------


@pytest.mark.parametrize("path", [MANIFEST, MULTI_REPLICA], ids=lambda path: path.name)
def test_programs_file_is_in_a_mounted_configmap(path):
    """--programs-file names a file of a ConfigMap that is defined in the same file and mounted in the sidecar."""
    documents = _documents(path)
    sidecar = _container(_pod(_app_deployment(documents)), "dspy-pool")
    assert _server_config(sidecar).state.programs_file, "the sidecar loads no --programs-file"
    name, text = _programs_text(documents)
    assert name.endswith((".yaml", ".yml")) and text.strip()


@pytest.mark.parametrize("path", [MANIFEST, MULTI_REPLICA], ids=lambda path: path.name)
def test_programs_configmap_loads_as_specs(path, tmp_path):
    """The ConfigMap's programs.yaml loads with load_specs, and each spec passes the front's register checks."""
    from dspy_pool.server.cache import policy_for
    from dspy_pool.server.fallback import Step
    from dspy_pool.server.registry import check_spec
    from dspy_pool.server.resilience import chain_for
    from dspy_pool.server.service import check_spec_values
    from dspy_pool.spec_files import load_specs

    documents = _documents(path)
    config = _server_config(_container(_pod(_app_deployment(documents)), "dspy-pool"))
    name, text = _programs_text(documents)
    written = tmp_path / name
    written.write_text(text, encoding="utf-8")
    specs = load_specs(written)
    assert specs
    assert len({spec.name for spec in specs}) == len(specs), "a name twice: the second would become a new version"
    for spec in specs:
        check_spec_values(spec, config.server.max_input_depth)
        check_spec(spec, BUILTIN_KINDS)
        chain = chain_for(spec, config.resilience.default_fallback)
        policy_for(spec, config.resilience.result_cache_ttl_s, Step.CACHE in chain.steps)


# -- deployment.yaml: one pod, its state on a volume ------------------------------------------


@pytest.fixture(scope="module")
def single_documents() -> list[dict]:
    return _documents(MANIFEST)


@pytest.fixture(scope="module")
def single_pod(single_documents) -> dict:
    return _pod(_app_deployment(single_documents))


@pytest.fixture(scope="module")
def single_sidecar(single_pod) -> dict:
    return _container(single_pod, "dspy-pool")


def test_single_pod_state_dir_is_named_by_the_env(single_sidecar):
    """The sidecar keeps SQLite's state.db in the folder its DSPY_POOL_STATE_DIR names."""
    config = _server_config(single_sidecar)
    assert config.state.url == "sqlite"
    assert config.state.dir == _env(single_sidecar)["DSPY_POOL_STATE_DIR"]["value"]


def test_single_pod_state_dir_is_a_mounted_claim(single_documents, single_pod, single_sidecar):
    """A PersistentVolumeClaim defined in the file is mounted, writable, at the state dir."""
    state_dir = _server_config(single_sidecar).state.dir
    mount = _mount_holding(single_sidecar, state_dir)
    assert mount is not None and mount["mountPath"] == state_dir
    assert not mount.get("readOnly", False)
    claim = _volume(single_pod, mount["name"])["persistentVolumeClaim"]["claimName"]
    assert _named(single_documents, "PersistentVolumeClaim", claim)


def test_single_pod_state_dir_is_the_image_volume(single_sidecar):
    """The state dir the sidecar uses is the VOLUME the Dockerfile declares."""
    assert _server_config(single_sidecar).state.dir in _image_volumes()


def test_single_pod_volume_is_writable_by_the_sidecar(single_pod, single_sidecar):
    """The pod's fsGroup is the sidecar's group, so a new (root-owned) volume is writable by the non-root server."""
    assert single_pod["securityContext"]["fsGroup"] == single_sidecar["securityContext"]["runAsGroup"]


def test_single_pod_has_one_writer(single_documents):
    """One replica, replaced with Recreate: SQLite has one writer, so no surge pod may open the file."""
    spec = _app_deployment(single_documents)["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"


# -- multi-replica.yaml: several pods sharing Redis -------------------------------------------


@pytest.fixture(scope="module")
def multi_documents() -> list[dict]:
    return _documents(MULTI_REPLICA)


def _sidecars(documents: list[dict]) -> list[dict]:
    return [c for d in _of_kind(documents, "Deployment") for c in _pod(d)["containers"] if c["name"] == "dspy-pool"]


def _redis_url(container: dict) -> urllib.parse.SplitResult:
    return urllib.parse.urlsplit(_server_config(container).state.url)


def _is_redis(container: dict) -> bool:
    return "redis-server" in _redis_args(container) or container["image"].split(":")[0].rsplit("/", 1)[-1] == "redis"


def _redis_args(container: dict) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def _redis(documents: list[dict]) -> tuple[dict, dict]:
    """(pod, container) of the one Redis in the file."""
    ((pod, redis),) = [(_pod(d), c) for d in _of_kind(documents, "Deployment") for c in _pod(d)["containers"] if _is_redis(c)]
    return pod, redis


def _selected_redis(documents: list[dict], service: dict) -> dict:
    """The Redis container of the one Deployment whose pods `service` selects."""
    selector = service["spec"]["selector"]
    (deployment,) = [d for d in _of_kind(documents, "Deployment")
                     if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
    (redis,) = [c for c in _pod(deployment)["containers"] if _is_redis(c)]
    return redis


def _redis_listen_port(redis: dict) -> int:
    return int(_after(_redis_args(redis), "--port", str(REDIS_DEFAULT_PORT)))


def test_multi_replica_runs_several_replicas(multi_documents):
    """The app + sidecar Deployment runs more than one replica."""
    assert _app_deployment(multi_documents)["spec"]["replicas"] > 1


def test_every_sidecar_state_is_a_redis_service_in_the_file(multi_documents):
    """Each sidecar's --state (or DSPY_POOL_STATE) is redis://HOST:PORT/DB, HOST a Service in the file exposing PORT."""
    sidecars = _sidecars(multi_documents)
    assert sidecars
    for sidecar in sidecars:
        url = _redis_url(sidecar)
        assert url.scheme == "redis", f"state {url.geturl()!r} is not redis://"
        service = _named(multi_documents, "Service", url.hostname)
        assert (url.port or REDIS_DEFAULT_PORT) in [port["port"] for port in service["spec"]["ports"]]


def test_redis_service_targets_the_port_redis_listens_on(multi_documents):
    """The Service the sidecars name selects the Redis pod and forwards to the port redis-server listens on."""
    url = _redis_url(_sidecars(multi_documents)[0])
    service = _named(multi_documents, "Service", url.hostname)
    redis = _selected_redis(multi_documents, service)
    listen = _redis_listen_port(redis)
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == (url.port or REDIS_DEFAULT_PORT)]
    target = port.get("targetPort", port["port"])
    if isinstance(target, str):
        (named,) = [p for p in redis["ports"] if p.get("name") == target]
        target = named["containerPort"]
    assert target == listen
    assert listen in [p["containerPort"] for p in redis.get("ports", [])]


def test_redis_appends_to_a_claim(multi_documents):
    """Redis runs with AOF on, its data dir a PersistentVolumeClaim defined in the file."""
    pod, redis = _redis(multi_documents)
    args = _redis_args(redis)
    assert _after(args, "--appendonly", "no") == "yes"
    mount = _mount_holding(redis, _after(args, "--dir", "/data"))
    assert mount is not None
    claim = _volume(pod, mount["name"])["persistentVolumeClaim"]["claimName"]
    assert _named(multi_documents, "PersistentVolumeClaim", claim)


def test_redis_never_evicts_state(multi_documents):
    """maxmemory-policy is noeviction: program versions and sessions are state, not cache."""
    _, redis = _redis(multi_documents)
    assert _after(_redis_args(redis), "--maxmemory-policy", "") == "noeviction"


# -- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_state_dir_is_its_volume():
    """The image's DSPY_POOL_STATE_DIR is a VOLUME the Dockerfile declares."""
    assert _image_env()["DSPY_POOL_STATE_DIR"] in _image_volumes()


def test_dockerfile_creates_the_state_dir_for_its_user_before_the_volume():
    """A RUN before VOLUME creates the state dir owned by the image's USER (changes after VOLUME are discarded)."""
    instructions = _dockerfile_instructions()
    state_dir = _image_env()["DSPY_POOL_STATE_DIR"]
    user = [rest for keyword, rest in instructions if keyword == "USER"][-1]
    volume_at = next(index for index, (keyword, rest) in enumerate(instructions) if keyword == "VOLUME" and state_dir in rest)
    assert any(keyword == "RUN" and state_dir in rest and user in rest for keyword, rest in instructions[:volume_at])
