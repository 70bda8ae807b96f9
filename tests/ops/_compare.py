"""Helpers shared by the op tests: reproducible per-case random generators and bit-exact comparison.

Imported by bare name (tests/ops has no __init__.py, so pytest puts this directory on sys.path).
"""

import zlib

import torch


def generator(*key) -> torch.Generator:
    """A generator seeded from the test's parameters: fresh data per case, reproducible on failure."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def assert_bits_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Bit-exact equality; NaNs must sit in the same places (equal_nan semantics, any payload)."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.cpu(), expected.cpu()
    if actual.is_floating_point():
        nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
        assert torch.equal(nan_a, nan_e), f"{what}: NaN positions differ"
        int_t = {4: torch.int32, 2: torch.int16}[actual.element_size()]
        actual = actual.masked_fill(nan_a, 0).view(int_t)
        expected = expected.masked_fill(nan_e, 0).view(int_t)
    if not torch.equal(actual, expected):
        bad = (actual != expected).nonzero()[:5].tolist()
        raise AssertionError(f"{what}: {int((actual != expected).sum())} elements differ, first at {bad}")
