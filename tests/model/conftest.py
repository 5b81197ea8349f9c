"""Model tests run single-threaded: tiny tensors gain nothing from intra-op threads, and on a
shared 2-core machine OpenMP spin-waiting made them ~20x slower."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
