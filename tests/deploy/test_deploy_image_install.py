"""The Dockerfile's install steps, replayed without Docker.

What this covers:
- `test_project_install_from_the_copied_sources`: the project stage's `COPY` lines (parsed from
  docker/Dockerfile) are enough for `pip install .`: the sources they copy build a wheel (the
  artifact a non-editable `pip install .` installs) holding every module and data file of the
  packages, and that wheel, unpacked away from the repository, imports and finds its package
  data. The dependencies come from this venv, standing in for the image's torch and
  requirements layers.
- `test_image_dependency_layers_resolve` (slow, needs the package index): pip resolves each
  image's dependency layers exactly as the Dockerfile asks for them (`--dry-run
  --ignore-installed`, nothing installed): the project image gets the pinned torch as the CUDA
  build (nvidia-* runtime wheels), ray with its `default` extra (job API), and an MLflow within
  the project's pin; the mlflow image gets mlflow[auth] (Flask-WTF), psycopg2 and boto3.
Not covered: the base image itself, apt layers (there are none), GPU visibility in a container.
"""

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy.deploy_files import REPO_ROOT, dockerfile_stages

PACKAGES = ("lora_train", "tracking", "sweeps", "vggt_common")


def _copy_like_the_dockerfile(app: Path) -> list[str]:
    """Replay the project stage's `COPY <repo paths> <dest>` lines into `app` (the image's /app)."""
    lines = dockerfile_stages()["project"]
    workdir = lines.index("WORKDIR /app")
    copied = []
    for line in lines[workdir:]:
        if not line.startswith("COPY ") or "--chmod" in line:
            continue
        *sources, dest = line.split()[1:]
        for source in sources:
            target = app / (Path(source).name if dest.endswith("/") or dest == "./" else dest)
            if (REPO_ROOT / source).is_dir():
                shutil.copytree(REPO_ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO_ROOT / source, target)
            copied.append(source)
    return copied


def _package_files() -> set[str]:
    files = set()
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".yaml", ".txt", ".json"):
                files.add(path.relative_to(REPO_ROOT).as_posix())
    return files


@pytest.mark.timeout(300)
def test_project_install_from_the_copied_sources(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    copied = _copy_like_the_dockerfile(app)
    assert {"pyproject.toml", "README.md", *PACKAGES} <= set(copied)
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert set(pyproject["tool"]["setuptools"]["packages"]["find"]["include"]) == {f"{p}*" for p in PACKAGES}

    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
         "-q", "-w", str(wheels), str(app)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
        missing = _package_files() - in_wheel
        assert not missing, f"files `pip install .` would leave out of the image: {sorted(missing)}"
        site = tmp_path / "site"
        archive.extractall(site)

    # Import from the unpacked wheel, away from the repository (as in the image).
    probe = f"PACKAGES = {PACKAGES!r}\n" + r"""
import importlib, json, pathlib
out = {}
for name in PACKAGES:
    out[name] = list(importlib.import_module(name).__path__)
data = [str(p) for pkg in ("lora_train", "sweeps") for root in importlib.import_module(pkg).__path__
        for p in pathlib.Path(root).rglob("*.yaml")]
import ray.dashboard.modules.job.sdk, aiohttp, torch, peft, optuna, mlflow  # ray[default]: the job API
out["yaml"] = data
print(json.dumps(out))
"""
    # -S + explicit paths: this venv's packages without its .pth files, so the repository's own
    # editable install (a .pth hook) cannot leak in; the image has none.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    result = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, timeout=240,
                            cwd=tmp_path, env={"PYTHONPATH": ":".join([str(site), *deps]), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    for package in PACKAGES:
        assert found[package] == [str(site / package)], f"{package} imported from {found[package]}, not the install"
    repo_yaml = {p.relative_to(REPO_ROOT).as_posix() for pkg in ("lora_train", "sweeps")
                 for p in (REPO_ROOT / pkg).rglob("*.yaml")}
    assert {Path(p).relative_to(site).as_posix() for p in found["yaml"]} == repo_yaml


def _resolve(tmp_path: Path, name: str, requirements: list[str]) -> dict[str, str]:
    report = tmp_path / f"{name}.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), *requirements],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in installs}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_dependency_layers_resolve(tmp_path):
    stages = dockerfile_stages()
    args = {m[1]: m[2] for line in stages["project"] + stages["mlflow"]
            if (m := re.match(r"ARG (\w+)=(\S*)", line))}
    project = " ".join(stages["project"])
    assert '"torch==${TORCH_VERSION}"' in project and "tomllib.load" in project
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]

    resolved = _resolve(tmp_path, "project", [f"torch=={args['TORCH_VERSION']}", *dependencies])
    assert resolved["torch"] == args["TORCH_VERSION"]
    cuda_runtime = [name for name in resolved if name.startswith("nvidia-cuda-runtime")]
    assert cuda_runtime and any(name.startswith("nvidia-cudnn") for name in resolved), "torch is not the CUDA build"
    assert {"aiohttp", "opencensus", "prometheus-client"} <= set(resolved), "ray[default] extras missing"
    for requirement in map(Requirement, dependencies):
        assert requirement.specifier.contains(resolved[requirement.name.lower()], prereleases=True), requirement

    mlflow_line = next(line for line in stages["mlflow"] if line.startswith("RUN pip install"))
    assert '"mlflow[auth]==${MLFLOW_VERSION}" psycopg2-binary boto3' in mlflow_line
    server = _resolve(tmp_path, "mlflow", [f"mlflow[auth]=={args['MLFLOW_VERSION']}", "psycopg2-binary", "boto3"])
    assert server["mlflow"] == args["MLFLOW_VERSION"]
    assert {"flask-wtf", "psycopg2-binary", "boto3"} <= set(server)
    mlflow_pin = next(Requirement(d) for d in dependencies if d.startswith("mlflow"))
    assert mlflow_pin.specifier.contains(server["mlflow"]), "server and client MLflow versions drift apart"
