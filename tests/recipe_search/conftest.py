"""Search tests time and evaluate tiny models: one torch thread avoids contention on shared 2-core machines."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
