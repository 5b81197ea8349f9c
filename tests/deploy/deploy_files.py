"""Readers for the files under docker/ that the deploy and fault tests check.

Compose interpolation is implemented here (the subset the compose spec defines: `$$`, `$VAR`,
`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`) so that the
cross-reference checks run the same way whether or not a compose CLI is installed.
"""

import re
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
MLFLOW_ENTRYPOINT = DOCKER_DIR / "mlflow-entrypoint.sh"
PROJECT_ENTRYPOINT = DOCKER_DIR / "entrypoint.sh"

_BRACED = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
_BARE = re.compile(r"\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


class MissingVariable(Exception):
    """A `${VAR:?error}` or `${VAR?error}` whose variable is missing."""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose env file (comments and blank lines skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip()
    return env


def compose_variables(text: str) -> set[str]:
    """Names of every variable a compose file interpolates (`$$` escapes excluded)."""
    text = text.replace("$$", "")
    return {m["name"] for m in _BRACED.finditer(text)} | {m["name"] for m in _BARE.finditer(text)}


def interpolate(value, env: dict[str, str]):
    """Compose-style interpolation of every string in a parsed compose document."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def braced(match):
        name, op, arg = match["name"], match["op"], match["arg"]
        present = name in env and (env[name] != "" or op in ("-", "?"))
        if op in (":-", "-"):
            return env[name] if present else arg
        if op in (":?", "?"):
            if not present:
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        return env.get(name, "")

    parts = value.split("$$")
    parts = [_BARE.sub(lambda m: env.get(m["name"], ""), _BRACED.sub(braced, part)) for part in parts]
    return "$".join(parts)


def load_compose(env: dict[str, str]) -> dict:
    """docker-compose.yml with YAML anchors/merges resolved and variables interpolated."""
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), env)


def environment_of(service: dict) -> dict[str, str]:
    """A service's `environment` as a dict (list form `KEY=VALUE` accepted)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def mlflow_allowed_hosts(service_env: dict[str, str]) -> list[str]:
    """The `--allowed-hosts` list docker/mlflow-entrypoint.sh passes for this environment."""
    text = MLFLOW_ENTRYPOINT.read_text()
    match = re.search(r'^allowed_hosts="([^"$]+)"', text, re.MULTILINE)
    assert match, "mlflow-entrypoint.sh: no allowed_hosts=\"...\" line"
    assert '--allowed-hosts "$allowed_hosts"' in text, "mlflow-entrypoint.sh does not pass allowed_hosts"
    hosts = match[1].split(",")
    extra = service_env.get("MLFLOW_EXTRA_ALLOWED_HOSTS", "")
    return hosts + [host.strip() for host in extra.split(",") if host.strip()]


def script_variables(path: Path) -> set[str]:
    """UPPER_CASE environment variables a script needs: read without a default, not exported by it.

    Shell: `$NAME`, `${NAME}`, `${NAME:?...}` (not `${NAME:-default}`), names listed in `for name in ...` loops and passed to
    `require`/`require_secret`. Python: `os.environ[...]`, `os.environ.get(...)`, `_setting(...)`
    and tuples of names iterated by `for name in (...)`.
    """
    text = path.read_text()
    if path.suffix == ".py":
        names = set(re.findall(r"""(?:os\.environ(?:\.get)?[\[(]|_setting\()\s*["']([A-Z][A-Z0-9_]*)["']""", text))
        for group in re.findall(r"for name in \(([^)]*)\)", text):
            names |= set(re.findall(r'"([A-Z][A-Z0-9_]*)"', group))
        names |= set(re.findall(r"""_setting\(\s*["']([A-Z][A-Z0-9_]*)["']""", text))
        return names
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    code = re.sub(r"<<'(\w+)'\n.*?\n\1\n", "\n", code, flags=re.DOTALL)  # quoted heredocs: not expanded
    code = re.sub(r"\\\n", " ", code)
    names = {m["name"] for m in _BRACED.finditer(code) if m["op"] not in (":-", "-")}
    names |= {m["name"] for m in _BARE.finditer(code)}
    for loop in re.findall(r"for name in ([A-Z0-9_ ]+);", code):
        names |= set(loop.split())
    names |= set(re.findall(r"\brequire(?:_secret)?\s+([A-Z][A-Z0-9_]*)", code))
    exported = set(re.findall(r"^\s*export\s+([A-Z][A-Z0-9_]*)=", code, re.MULTILINE))
    return {name for name in names - exported if name.isupper()}


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name → its instructions (continuation lines joined) from docker/Dockerfile."""
    stages: dict[str, list[str]] = {}
    current = None
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
            current = match[1] if match else f"stage{len(stages)}"
            stages[current] = []
        if current is not None:
            stages[current].append(line)
    return stages
