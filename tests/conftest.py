"""Shared fixtures: the demo shop's KB and models built from it once per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_KB = ROOT / "models" / "demo-shop-kb.csv"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def demo_kb() -> Path:
    return DEMO_KB


@pytest.fixture(scope="session")
def demo_matcher():
    """The default profile (dense channel on), as `make run` serves it."""
    from engine import Matcher

    return Matcher.build(DEMO_KB)


@pytest.fixture(scope="session")
def fast_matcher():
    """The fast profile: dense channel off."""
    from engine import Matcher

    return Matcher.build(DEMO_KB, dense=False)


def shared_set(name: str) -> Path:
    """A public data set beside the project; tests that need one skip with a reason when it is absent."""
    path = SHARED_DATA / name
    if not (path / "kb.csv").is_file():
        pytest.skip(f"shared data set {path} is not present on this machine")
    return path


os.environ.setdefault("KEFU_EMBED_THREADS", "2")
# apps started by tests would freeze the test process's objects for good (api.main.freeze_start_up)
os.environ.setdefault("KEFU_GC_FREEZE", "false")


# ---------------------------------------------------------------- real services (PostgreSQL, Redis)

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _pg_admin_url() -> str | None:
    """The PostgreSQL the tests may use: KEFU_TEST_DATABASE_URL (set by .ci/run), else a local one."""
    url = os.environ.get("KEFU_TEST_DATABASE_URL") or DEFAULT_PG
    try:
        import psycopg

        with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=2):
            return url
    except Exception:
        return None


def _redis_url() -> str | None:
    url = os.environ.get("KEFU_TEST_REDIS_URL") or DEFAULT_REDIS
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        return url
    except Exception:
        return None


def _unreachable(service: str, env: str) -> None:
    """Skip on a laptop without the service; fail where it was promised (CI sets the variable)."""
    if os.environ.get(env):
        pytest.fail(f"{service} at ${env} does not answer")
    pytest.skip(f"no {service} reachable (set {env}); .ci/run provides one")


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url = _pg_admin_url()
    if url is None:
        _unreachable("PostgreSQL", "KEFU_TEST_DATABASE_URL")
    assert url is not None
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = _redis_url()
    if url is None:
        _unreachable("Redis", "KEFU_TEST_REDIS_URL")
    assert url is not None
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A test run on both databases: a new SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/kefu.db"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
def pg_database(pg_admin_url: str):
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import uuid

    import psycopg

    name = f"kefu_t_{uuid.uuid4().hex[:12]}"
    admin = pg_admin_url.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_admin_url.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------- log audit

# one file per test process: two sessions on one machine (a CI run beside a developer's) must not unlink
# and replace each other's log, which left the audit reading the other session's handful of lines. Under
# pytest-xdist (`make test` runs two workers) each worker writes its own file, named after the run the
# controller started, and the controller audits them all once every worker has finished.
AUDIT_RUN_ENV = "KEFU_TEST_AUDIT_RUN"
AUDIT_DIR = Path(tempfile.gettempdir())


def _audit_log_path() -> Path:
    if os.environ.get("KEFU_TEST_LOG"):
        return Path(os.environ["KEFU_TEST_LOG"])
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    run = os.environ.get(AUDIT_RUN_ENV)
    if worker and run:
        return AUDIT_DIR / f"kefu-test-audit-{run}-{worker}.log"
    return AUDIT_DIR / f"kefu-test-audit-{os.getpid()}.log"


def _is_xdist_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


def pytest_configure(config: pytest.Config) -> None:
    """The controller names the run before its workers start (they inherit the environment)."""
    if _is_xdist_controller(config):
        import uuid

        os.environ[AUDIT_RUN_ENV] = uuid.uuid4().hex[:12]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under xdist, audit every worker's log after all of them finished (tests/log_audit.py)."""
    if not _is_xdist_controller(session.config) or not os.environ.get(AUDIT_RUN_ENV):
        return
    from tests.log_audit import audit

    files = sorted(AUDIT_DIR.glob(f"kefu-test-audit-{os.environ[AUDIT_RUN_ENV]}-*.log"))
    problems = audit([line for f in files for line in f.read_text(encoding="utf-8").splitlines()])
    if not os.environ.get("KEFU_TEST_LOG"):
        for f in files:
            f.unlink(missing_ok=True)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if problems:
        if reporter is not None:
            reporter.write_line(f"log audit of {len(files)} worker logs FAILED:", red=True)
            for problem in problems[:50]:
                reporter.write_line(f"  {problem}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif reporter is not None:
        reporter.write_line(f"log audit: {len(files)} worker logs, no personal data")


@pytest.fixture(scope="session", autouse=True)
def audit_log():
    """Every log record of the session, through the same masking filter the service installs.

    tests/test_zz_log_audit.py (collected last) greps this file for personal data.
    """
    import logging

    from api.dialog.privacy import MaskingFilter

    log = _audit_log_path()  # named here, not at import: xdist names the worker after conftest is read
    log.unlink(missing_ok=True)
    handler = logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(min(old_level or logging.INFO, logging.INFO))
    root.addHandler(handler)
    logging.getLogger("kefu.audit").info("audit canary: customer phone %s", "13912345678")
    yield log
    root.removeHandler(handler)
    root.setLevel(old_level)
    handler.close()
    # kept where asked for, and under xdist for the controller's audit (which removes it)
    if not os.environ.get("KEFU_TEST_LOG") and not os.environ.get("PYTEST_XDIST_WORKER"):
        log.unlink(missing_ok=True)
