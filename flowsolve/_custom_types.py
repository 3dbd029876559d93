"""Shared type aliases."""

from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Float, Int, PyTree, Real


Scalar: TypeAlias = Float[Array, ""]
ScalarLike: TypeAlias = float | int | Real[ArrayLike, ""]
Inputs: TypeAlias = Real[Array, "n ..."]
Labels: TypeAlias = Float[Array, " n"]
Params: TypeAlias = PyTree[Any]

__all__ = ["Array", "ArrayLike", "Float", "Int", "PyTree", "Real", "Scalar", "ScalarLike", "Inputs", "Labels", "Params"]
