"""Training tests train tiny models: one torch thread (the ``one_thread`` fixture of tests/conftest.py),
on scikit-learn's digits (``digits``: 14 training batches of 100 and a held-out set)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return [(x[i:i + 100], y[i:i + 100]) for i in range(0, 1400, 100)], (x[1400:], y[1400:])
