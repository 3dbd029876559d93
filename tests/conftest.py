import jax
import jax.random as jr
import pytest


# Tests run in float64 (library code never flips this; the test suite does).
jax.config.update("jax_enable_x64", True)


@pytest.fixture
def getkey():
    """A fresh PRNG key each call, deterministic per test."""
    counter = iter(range(10**6))

    def _getkey():
        return jr.fold_in(jr.key(0), next(counter))

    return _getkey
