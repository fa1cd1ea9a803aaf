"""Fixtures: one temp base per session, one server + agent per test module."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import sigil  # noqa: E402


def pytest_collection_modifyitems(config, items):
    missing = [p for p in (sigil.SERVER_BIN, sigil.AGENT_BIN) if not os.access(p, os.X_OK)]
    if missing:
        skip = pytest.mark.skip(reason="binaries not built (run `make`): %s" % ", ".join(missing))
        for item in items:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for d in sigil.DAEMONS:
            state = "running" if d.alive() else "exited rc=%s" % d.proc.returncode
            rep.sections.append(("%s (%s) log" % (d.name, state), d.log()[-20000:]))


@pytest.fixture(scope="session")
def env():
    e = sigil.Env()
    yield e
    e.cleanup()


@pytest.fixture(scope="session")
def wl(env):
    """The Workload API message classes."""
    return env.wl


@pytest.fixture(scope="module")
def cluster(env, request):
    """A running server and one agent attested with a fresh join token.

    Teardown stops both with SIGTERM and fails if either outlives 5 s.
    """
    c = sigil.Cluster(env, request.module.__name__.split(".")[-1])
    try:
        c.start_server()
        c.write_bundle()
        c.start_agent("agent")
    except BaseException:
        c.shutdown()
        raise
    yield c
    sigil.stop_cluster(c)


@pytest.fixture(scope="module")
def agent(cluster):
    return cluster.agents["agent"]
