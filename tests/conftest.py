"""Shared test settings: deterministic hypothesis runs, a fixed torch seed per test."""

import pytest
import torch
from hypothesis import HealthCheck, settings

# CI must be reproducible: derandomize draws the same examples on every run.
settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one thread, restoring the count afterwards.

    Tests of many tiny ops spend most of their time with OpenMP threads waiting
    for each other on a busy 2-core machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Tests that start other processes (a sandboxed kernel per notebook, a fresh virtual
# environment, nbgrader in its own venv, a Jupyter server): `make test-integration`.
INTEGRATION = {"test_course_grading.py", "test_nbgrader.py", "test_colab_install.py", "test_local_lab.py"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.path.name in INTEGRATION:
            item.add_marker(pytest.mark.integration)
