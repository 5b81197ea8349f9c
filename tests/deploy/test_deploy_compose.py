"""docker/: the compose file, its env file, scripts and Dockerfile agree with each other.

No Docker engine runs here, so these tests check what can be checked without one: the compose
schema (via `docker compose config` / Debian's `docker-compose config` when installed) and every
cross-reference between services, variables, volumes, scripts and the Dockerfile.
"""

import re
import shutil
import subprocess
from urllib.parse import urlparse

import pytest
import yaml
from mlflow.server.security_utils import is_allowed_host_header

from tests.deploy.deploy_files import (
    COMPOSE_FILE,
    DOCKER_DIR,
    DOCKERFILE,
    ENV_EXAMPLE,
    PROJECT_ENTRYPOINT,
    REPO_ROOT,
    MissingVariable,
    compose_variables,
    dockerfile_stages,
    environment_of,
    load_compose,
    mlflow_allowed_hosts,
    read_env_file,
    script_variables,
)

LONG_RUNNING = ("postgres", "minio", "mlflow", "ray-head", "ray-worker")
ONE_SHOT = ("minio-init", "mlflow-init")
SECRETS = (
    "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_SWEEP_PASSWORD", "RAY_AUTH_TOKEN",
)
SCRIPT_OF_SERVICE = {  # the script each service runs, and where the service gets it from
    "postgres": "postgres-init.sh",
    "minio-init": "minio-init.sh",
    "mlflow": "mlflow-entrypoint.sh",
    "mlflow-init": "mlflow-create-user.py",
    "ray-head": "entrypoint.sh",
    "ray-worker": "entrypoint.sh",
}
IMAGE_ENV = {"HOME", "PATH"}  # set by the images themselves


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(env_example) -> dict:
    return load_compose(env_example)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_cli_validates_the_file_against_the_compose_schema(tmp_path):
    """The compose CLI's own schema validation and interpolation with .env.example."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no compose CLI here (apt-get install --no-install-recommends docker-compose)")
    result = subprocess.run(
        [*cli, "--project-directory", str(DOCKER_DIR), "-f", str(COMPOSE_FILE),
         "--env-file", str(ENV_EXAMPLE), "config"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == set(LONG_RUNNING) | set(ONE_SHOT)
    ports = [p for s in rendered["services"].values() for p in s.get("ports", [])]
    assert ports, "no published port"
    for port in ports:  # long syntax (compose v2) or short "ip:host:container/proto" (v1)
        host_ip = port["host_ip"] if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1", port

    # A missing secret stops compose before anything starts.
    env_without_secret = tmp_path / "env"
    env_without_secret.write_text(
        "".join(line + "\n" for line in ENV_EXAMPLE.read_text().splitlines()
                if not line.startswith("MLFLOW_ADMIN_PASSWORD="))
    )
    result = subprocess.run(
        [*cli, "--project-directory", str(DOCKER_DIR), "-f", str(COMPOSE_FILE),
         "--env-file", str(env_without_secret), "config"],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert result.returncode != 0 and "MLFLOW_ADMIN_PASSWORD" in result.stderr


def test_every_variable_is_in_env_example_and_every_setting_is_used(env_example):
    used = compose_variables(COMPOSE_FILE.read_text())
    assert used - set(env_example) == set(), "compose variables missing from .env.example"
    # COMPOSE_PROJECT_NAME is read by the compose CLI itself.
    assert set(env_example) - used - {"COMPOSE_PROJECT_NAME"} == set(), ".env.example settings nobody reads"


def test_env_example_commits_no_secret(env_example):
    for name in SECRETS:
        assert env_example[name].startswith("change-me"), f"{name} must be a change-me placeholder"
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO_ROOT)
    assert ignored.returncode == 0, "docker/.env is not git-ignored"


def test_missing_secret_is_refused_by_interpolation(env_example):
    for name in SECRETS:
        env = {k: v for k, v in env_example.items() if k != name}
        with pytest.raises(MissingVariable, match=name):
            load_compose(env)


def test_services_volumes_dependencies_and_health_checks(compose, services):
    assert set(services) == set(LONG_RUNNING) | set(ONE_SHOT)
    declared = set(compose["volumes"])
    used = set()
    for name, service in services.items():
        assert "image" in service, f"{name}: no image"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DOCKER_DIR / source).is_file(), f"{name}: bind-mounted {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
        for target, condition in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = condition["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health check"
            elif condition == "service_completed_successfully":
                assert target in ONE_SHOT
            else:
                pytest.fail(f"{name}: unexpected depends_on condition {condition}")
    assert used == declared, f"volumes declared but unused: {declared - used}"
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: no health check"
        assert services[name]["restart"] == "unless-stopped"
    for name in ONE_SHOT:
        assert services[name]["restart"] == "no" and "healthcheck" not in services[name]
    # Start order: postgres+minio → minio-init → mlflow → mlflow-init → ray-head → ray-worker.
    order, remaining = [], dict(services)
    while remaining:
        ready = [n for n, s in remaining.items() if set(s.get("depends_on") or {}) <= set(order)]
        assert ready, f"depends_on cycle among {sorted(remaining)}"
        order += sorted(ready)
        for n in ready:
            del remaining[n]
    assert order.index("mlflow-init") < order.index("ray-head") < order.index("ray-worker")


def test_published_ports_bind_loopback_by_default_and_follow_bind_address(env_example, services):
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    published = {name: s["ports"] for name, s in raw.items() if s.get("ports")}
    assert set(published) == {"minio", "mlflow", "ray-head"}  # postgres and workers: internal only
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"
    assert env_example["BIND_ADDRESS"] == "127.0.0.1"
    unset = {k: v for k, v in env_example.items() if k != "BIND_ADDRESS"}
    for env, expected in ((env_example, "127.0.0.1"), (unset, "127.0.0.1"),
                          ({**env_example, "BIND_ADDRESS": "10.1.2.3"}, "10.1.2.3")):
        for service in load_compose(env)["services"].values():
            for port in service.get("ports", []):
                assert port.split(":")[0] == expected
    mlflow_port = services["mlflow"]["ports"][0].split(":")
    assert mlflow_port[1:] == [env_example["MLFLOW_PORT"], "5000"]
    assert services["ray-head"]["ports"][0].split(":")[1:] == [env_example["RAY_DASHBOARD_PORT"], "8265"]


def test_scripts_get_every_variable_they_read(services):
    for name, script in SCRIPT_OF_SERVICE.items():
        needed = script_variables(DOCKER_DIR / script) - IMAGE_ENV
        provided = set(environment_of(services[name]))
        if name == "postgres":
            provided |= {"POSTGRES_USER", "POSTGRES_DB"}  # set by the postgres image's entrypoint
        assert needed <= provided, f"{name} ({script}) lacks {sorted(needed - provided)}"
    mounts = {m.split(":")[0]: m.split(":")[1] for s in services.values() for m in s.get("volumes", [])}
    assert mounts["./postgres-init.sh"].startswith("/docker-entrypoint-initdb.d/")
    assert services["minio-init"]["entrypoint"][-1] == mounts["./minio-init.sh"]


def test_mlflow_server_wiring(env_example, services):
    mlflow = environment_of(services["mlflow"])
    postgres = environment_of(services["postgres"])
    minio = environment_of(services["minio"])
    minio_init = environment_of(services["minio-init"])
    script = (DOCKER_DIR / "mlflow-entrypoint.sh").read_text()
    for flag in ("--app-name basic-auth", "--serve-artifacts", '--artifacts-destination "s3://${MLFLOW_S3_BUCKET}/"',
                 '--allowed-hosts "$allowed_hosts"', '--backend-store-uri "$(pg "$POSTGRES_DB")"'):
        assert flag in script, flag
    # Postgres: same credentials and database names on both sides.
    assert mlflow["POSTGRES_HOST"] == "postgres"
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "MLFLOW_AUTH_DB"):
        assert mlflow[key] == postgres[key] == env_example.get(key, mlflow[key]), key
    assert mlflow["MLFLOW_AUTH_DB"] != mlflow["POSTGRES_DB"]
    # S3: the bucket minio-init creates is the one mlflow writes to, with MinIO's credentials.
    assert mlflow["MLFLOW_S3_BUCKET"] == minio_init["MLFLOW_S3_BUCKET"] == env_example["MLFLOW_S3_BUCKET"]
    assert mlflow["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"] == minio_init["MINIO_ROOT_USER"]
    assert mlflow["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"] == minio_init["MINIO_ROOT_PASSWORD"]
    for url in (mlflow["MLFLOW_S3_ENDPOINT_URL"], minio_init["MINIO_ENDPOINT"]):
        assert urlparse(url).hostname == "minio" and urlparse(url).port == 9000
    assert 'mc mb --ignore-existing "store/$MLFLOW_S3_BUCKET"' in (DOCKER_DIR / "minio-init.sh").read_text()
    # Admin from the env file; the sweep account created by mlflow-init as that admin.
    assert mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"] == env_example["MLFLOW_ADMIN_PASSWORD"]
    assert mlflow["MLFLOW_FLASK_SERVER_SECRET_KEY"] == env_example["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    init = environment_of(services["mlflow-init"])
    assert init["MLFLOW_TRACKING_USERNAME"] == mlflow["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert init["MLFLOW_TRACKING_PASSWORD"] == mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert urlparse(init["MLFLOW_TRACKING_URI"]).hostname == "mlflow"


def test_ray_services_reach_mlflow_through_allowed_hosts_with_the_sweep_account(env_example, services):
    mlflow_env = environment_of(services["mlflow"])
    allowed = mlflow_allowed_hosts(mlflow_env)
    init = environment_of(services["mlflow-init"])
    for name in ("ray-head", "ray-worker"):
        env = environment_of(services[name])
        uri = urlparse(env["MLFLOW_TRACKING_URI"])
        assert uri.hostname in services and uri.port == 5000, f"{name}: {uri.geturl()}"
        assert is_allowed_host_header(allowed, uri.netloc), f"{uri.netloc} not in --allowed-hosts {allowed}"
        assert env["MLFLOW_TRACKING_USERNAME"] == init["MLFLOW_SWEEP_USERNAME"]
        assert env["MLFLOW_TRACKING_PASSWORD"] == init["MLFLOW_SWEEP_PASSWORD"]
        assert env["MLFLOW_TRACKING_USERNAME"] != mlflow_env["MLFLOW_AUTH_ADMIN_USERNAME"]
        assert not {"AWS_SECRET_ACCESS_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD", "POSTGRES_PASSWORD"} & set(env)
    # The published port from this machine, yes; an arbitrary DNS name (DNS rebinding), no.
    assert is_allowed_host_header(allowed, f"127.0.0.1:{env_example['MLFLOW_PORT']}")
    assert is_allowed_host_header(allowed, f"localhost:{env_example['MLFLOW_PORT']}")
    assert not is_allowed_host_header(allowed, "attacker.example:5000")
    assert not is_allowed_host_header(allowed, "10.0.0.7:5000")
    extra = mlflow_allowed_hosts({"MLFLOW_EXTRA_ALLOWED_HOSTS": "mlflow.lan:5000, 10.0.0.7:5000"})
    assert is_allowed_host_header(extra, "mlflow.lan:5000") and is_allowed_host_header(extra, "10.0.0.7:5000")


def test_ray_cluster_token_auth_gpu_workers_and_shared_storage(env_example, services):
    head, worker = services["ray-head"], services["ray-worker"]
    for service in (head, worker):
        env = environment_of(service)
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"] == env_example["RAY_AUTH_TOKEN"]
        assert service["image"] == env_example["PROJECT_IMAGE"]
        assert service["init"] is True and service["shm_size"] == env_example["RAY_SHM_SIZE"]
        assert {m.split(":")[1] for m in service["volumes"]} == {"/data/ray_results", "/data/cache"}
    assert head["command"] == ["ray-head"] and worker["command"] == ["ray-worker"]
    assert environment_of(worker)["RAY_HEAD_ADDRESS"].split(":") == ["ray-head", "6379"]
    entrypoint = PROJECT_ENTRYPOINT.read_text()
    for arm in ("ray-head)", "ray-worker)", "sweep)"):
        assert re.search(rf"^\s*{re.escape(arm)}", entrypoint, re.MULTILINE), arm
    assert "--dashboard-port=8265" in entrypoint and "--port=6379" in entrypoint
    assert "--num-gpus=0" in entrypoint  # trials go to the GPU workers, not the head
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": env_example["RAY_WORKER_GPU_COUNT"], "capabilities": ["gpu"]}]
    assert "deploy" not in head and "replicas" not in worker.get("deploy", {})  # --scale decides
    assert "container_name" not in worker and "ports" not in worker  # or --scale would collide
    # Health checks use the dashboard's public (token-free) endpoints.
    assert "/api/gcs_healthz" in " ".join(head["healthcheck"]["test"])
    assert "/api/local_raylet_healthz" in " ".join(worker["healthcheck"]["test"])


def test_dockerfile_stages_match_compose_builds(env_example, services):
    stages = dockerfile_stages()
    assert list(stages) == ["mlflow", "project"], "the project image must be the last (default) stage"
    builds = {name: s["build"] for name, s in services.items() if "build" in s}
    assert {b["target"] for b in builds.values()} == set(stages)
    for build in builds.values():
        assert (DOCKER_DIR / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    project_build = services["ray-head"]["build"]
    assert project_build["args"]["TORCH_VERSION"] == env_example["TORCH_VERSION"]
    for stage, lines in stages.items():
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and users[-1] not in ("root", "0"), f"{stage}: runs as root"
        for line in lines:
            if line.startswith("COPY") and "--from" not in line:
                sources = [a for a in line.split()[1:-1] if not a.startswith("--")]
                for source in sources:
                    assert (REPO_ROOT / source).exists(), f"{stage}: COPY {source}: not in the repository"
    # The build context's ignore file (BuildKit: docker/Dockerfile.dockerignore) lets every COPY through.
    ignore = [line.strip() for line in (DOCKER_DIR / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "**", "the context should be an allow-list (everything excluded first)"
    for line in (line for lines in stages.values() for line in lines if line.startswith("COPY")):
        for source in [a for a in line.split()[1:-1] if not a.startswith("--")]:
            allowed = f"!{source}/**" if (REPO_ROOT / source).is_dir() else f"!{source}"
            assert allowed in ignore, f"Dockerfile.dockerignore hides COPY source {source}"
    project = " ".join(stages["project"])
    assert 'pip install --no-cache-dir . ' in project + " " and "pip check" in project
    assert '"torch==${TORCH_VERSION}"' in project
    for package in ("lora_train", "tracking", "sweeps"):
        assert f"COPY {package} {package}" in project
    mlflow = " ".join(stages["mlflow"])
    for package in ('"mlflow[auth]==${MLFLOW_VERSION}"', "psycopg2-binary", "boto3"):
        assert package in mlflow
    entry = [line for line in stages["project"] if line.startswith("ENTRYPOINT")]
    assert entry == ['ENTRYPOINT ["entrypoint.sh"]']
