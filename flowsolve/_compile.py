"""Ahead-of-time compilation with a cache keyed on everything that is not an array,
so repeated solves of the same structure (new data, new θ0, new tolerances) reuse
one executable, and the compile time can be reported separately from run time."""

import collections
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu


_CACHE: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()
_MAX_ENTRIES = 64


def _flatten(tree):
    """`(leaves, treedef, is_dynamic, key)`: the leaves of `tree`, which of them are
    arrays, and a hashable key of everything but the arrays' values (the tree
    structure, the arrays' shapes and dtypes, the other leaves themselves; `None`
    when one is unhashable)."""
    leaves, treedef = jtu.tree_flatten(tree)
    is_dynamic = tuple(eqx.is_array(x) for x in leaves)
    signature = tuple(
        (x.shape, x.dtype, getattr(x, "weak_type", False)) if d else ("static", x)
        for x, d in zip(leaves, is_dynamic)
    )
    key = (treedef, signature)
    try:
        hash(key)
    except TypeError:
        key = None
    return leaves, treedef, is_dynamic, key


def abstract_key(tree):
    """A hashable key of what tracing a function of `tree` depends on (all but the
    arrays' values), or `None` when some non-array leaf is unhashable."""
    return _flatten(tree)[3]


def _split(args):
    """Flatten `args` once into its array leaves (the executable's inputs), what
    rebuilds `args` from them, and the cache key."""
    leaves, treedef, is_dynamic, key = _flatten(args)
    dynamic = [x for x, d in zip(leaves, is_dynamic) if d]
    static = tuple(None if d else x for x, d in zip(leaves, is_dynamic))
    return dynamic, (treedef, is_dynamic, static), key


def compile_and_run(tag: str, fn: Callable, args) -> tuple[Any, float, float]:
    """Run `fn(args)` compiled; return `(output, compile_seconds, run_seconds)`."""
    dynamic, (treedef, is_dynamic, static), key = _split(args)
    key = None if key is None else (tag, key)
    compiled = _CACHE.get(key) if key is not None else None
    compile_time = 0.0
    if compiled is None:

        def run(dyn):
            it = iter(dyn)
            leaves = [next(it) if d else x for x, d in zip(static, is_dynamic)]
            return fn(jtu.tree_unflatten(treedef, leaves))

        t0 = time.perf_counter()
        compiled = jax.jit(run).lower(dynamic).compile()
        compile_time = time.perf_counter() - t0
        if key is not None:
            _CACHE[key] = compiled
            while len(_CACHE) > _MAX_ENTRIES:
                _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(dynamic))
    return out, compile_time, time.perf_counter() - t0
