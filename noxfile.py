"""Developer sessions: `nox -s tests lint mypy`, `nox -s e2e`, `nox -s perf`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "mypy", "tests"]
PATHS = ["src", "tests", "perf", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-c", "constraints.txt", "-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def e2e(session: nox.Session) -> None:
    session.install("-c", "constraints.txt", "-e", ".[test]")
    session.run("pytest", "-m", "e2e", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-c", "constraints.txt", "ruff")
    session.run("ruff", "check", *PATHS)
    session.run("ruff", "format", "--check", *PATHS)


@nox.session
def mypy(session: nox.Session) -> None:
    session.install("-c", "constraints.txt", "-e", ".[test]")
    session.run("mypy")


@nox.session
def perf(session: nox.Session) -> None:
    """dockyard against Debian's docker-registry (perf/README.md); appends to perf/RESULTS.md.

    Arguments go to ``python -m perf.run`` (default ``all --compare``), for example
    ``nox -s perf -- all --compare --quick`` for a smoke run that records nothing.
    """
    session.install("-c", "constraints.txt", "-e", ".")
    session.run("python", "-m", "perf.run", *(session.posargs or ["all", "--compare"]))
