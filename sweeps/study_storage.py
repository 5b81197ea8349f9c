"""Where a sweep's Optuna study lives.

    sampler.storage (space file) or --optuna-storage URL (the flag wins):
        unset                                 sqlite:///<storage-path>/<name>/optuna.db (one machine)
        postgresql://USER@HOST:PORT/DB        a PostgreSQL database (driver: psycopg), shared by a
                                              resumed driver, other drivers and optuna-dashboard
        sqlite:////abs/path/study.db          another SQLite file (local disks only: SQLite's
                                              locking is unreliable on NFS)

No password in the URL: the space file is logged to MLflow, the command line shows in `ps`, the
Ray dashboard and the printed resume command, and the URL is pickled into the sweep's Tune state.
libpq takes the password from the environment of the host that runs the sweep driver:
`PGPASSWORD`, or a `~/.pgpass` line `HOST:PORT:DB:USER:PASSWORD` (mode 0600; `PGPASSFILE` names
another file).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from lora_train.errors import UserError

OPTUNA_DB = "optuna.db"
POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg")
FORM = "postgresql://USER@HOST:PORT/DB or sqlite:////ABSOLUTE/PATH"


def url_problem(url) -> str | None:
    """Why `url` cannot name a study storage (None: it can). Checks the form only."""
    if not isinstance(url, str) or "://" not in url:
        return f"expected a URL like {FORM}, got {url!r}"
    try:
        parsed = urlsplit(url)
        password, host, _port = parsed.password, parsed.hostname, parsed.port  # .port raises if not a number
    except ValueError as err:
        return f"malformed URL {redacted(url)}: {err}"
    if password is not None:
        return ("the URL holds a password; remove it and give the password to the sweep driver's host in "
                "PGPASSWORD or a ~/.pgpass line")
    if parsed.scheme in POSTGRES_SCHEMES:
        if not host or parsed.path.strip("/") == "":
            return f"a PostgreSQL URL names a host and a database: {FORM.split(' or ')[0]}, got {url!r}"
        return None
    if parsed.scheme == "sqlite":
        if not url.startswith("sqlite:////"):
            return f"a SQLite URL needs an absolute path (sqlite:////abs/path/study.db), got {url!r}"
        return None
    return f"unknown scheme {parsed.scheme!r} in {redacted(url)} (use {FORM})"


def redacted(url: str) -> str:
    """`url` with any password replaced by `***` (for messages)."""
    try:
        parsed = urlsplit(url)
        if parsed.password is None:
            return url
        return url.replace(f":{parsed.password}@", ":***@", 1)
    except ValueError:
        return url.split("://", 1)[0] + "://..."


def study_url(space, sweep_dir: Path) -> str:
    """The storage URL of this sweep's study (the space's, set by preflight, or the default file)."""
    return space.sampler.get("storage") or f"sqlite:///{Path(sweep_dir) / OPTUNA_DB}"


def check_storage(url: str, study_name: str, resume: bool, source: str, timeout: int = 5) -> None:
    """Connect once and look for the study: it must exist when resuming and must not otherwise (a new
    sweep would inherit an old study's trials). Reads only: creates no table, study or file.

    Raises:
        UserError: one line naming `source` (the flag or the space key): unreachable server, refused
            login, missing driver; or the study missing on --resume / present without it.
    """
    import sqlalchemy

    connect_args = {"connect_timeout": timeout}
    if url.startswith("sqlite:"):
        path = Path(url[len("sqlite:///"):])
        if not path.parent.is_dir():
            raise UserError(f"{source}: {url}: folder {path.parent} does not exist")
        if not path.is_file():
            return _check_study(False, study_name, resume, url)
        connect_args = {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    except ModuleNotFoundError as err:
        raise UserError(f"{source}: {redacted(url)} needs the PostgreSQL driver {err.name}: "
                        "pip install 'psycopg[binary]'") from None
    try:
        with engine.connect() as conn:
            exists = sqlalchemy.inspect(conn).has_table("studies") and conn.execute(
                sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :name"), {"name": study_name}
            ).first() is not None
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = " ".join(str(getattr(err, "orig", None) or err).split()).removeprefix("connection failed: ")
        reason = re.sub(r'^connection to server at "[^"]*", port \d+ failed: ', "", reason)  # the URL says so
        raise UserError(f"{source}: cannot use {redacted(url)}: {reason}") from None
    finally:
        engine.dispose()
    _check_study(exists, study_name, resume, url)


def _check_study(exists: bool, study_name: str, resume: bool, url: str) -> None:
    if resume and not exists:
        raise UserError(f"--resume: no Optuna study {study_name!r} in {redacted(url)}")
    if not resume and exists:
        raise UserError(f"--name: an Optuna study {study_name!r} already exists in {redacted(url)}; pass "
                        "--resume to continue its sweep or choose another --name")
