"""One intra-op torch thread for tests that train tiny models.

The matrices of a tiny model are far too small to gain from two threads, and on a machine whose
cores are shared (other test runs, benchmarks) a second OpenMP thread that is not scheduled makes
every parallel region wait for it: measured here, one training test took 28 s with two threads
and 1.5 s with one. Import the fixture into a test module to use it, or wrap a module-scoped
fixture (a server that generates in the background) in ``one_thread()``.
"""

import contextlib

import pytest


@contextlib.contextmanager
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_torch_thread():
    with one_thread():
        yield
