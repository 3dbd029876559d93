"""Ensembles: many flows or descents in one compiled call (`vmap`), sharded over all
devices with `jax.sharding`."""

from ._ensemble import descend as descend, solve as solve, stack as stack
