"""The documentation covers the public API: every public name has an entry in the
API reference (docs/api/*.md, mkdocstrings `::: name` blocks), every entry names
something that exists, and every page in the mkdocs nav exists, and the self-contained examples run. The
site itself is built with `mkdocs build --strict` in CI (.ci/run)."""

import os
import pathlib
import re
import subprocess
import sys
import textwrap
import types

import pytest

import flowsolve as fs


ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NAMESPACES = ("datasets", "ensemble", "losses", "metrics", "models", "plot", "reference")


def _public(module) -> set[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n in dir(module)
            if not n.startswith("_") and not isinstance(getattr(module, n), types.ModuleType)
        ]
    return set(names)


def public_names() -> set[str]:
    names = {f"flowsolve.{n}" for n in _public(fs)}
    for ns in NAMESPACES:
        assert isinstance(getattr(fs, ns), types.ModuleType), ns
        names |= {f"flowsolve.{ns}.{n}" for n in _public(getattr(fs, ns))}
    return names


def documented_names() -> set[str]:
    found = set()
    for page in sorted((DOCS / "api").glob("*.md")):
        found |= set(re.findall(r"^:::\s+(flowsolve(?:\.\w+)+)\s*$", page.read_text(), re.M))
    return found


def test_every_public_name_is_in_the_api_reference():
    missing = sorted(public_names() - documented_names())
    assert not missing, (
        "public names without an entry in docs/api/*.md (add a `::: name` line): "
        + ", ".join(missing)
    )


def test_every_api_entry_exists():
    def resolve(dotted: str):
        obj = fs
        for part in dotted.split(".")[1:]:
            obj = getattr(obj, part)
        return obj

    stale = []
    for name in sorted(documented_names()):
        try:
            resolve(name)
        except AttributeError:
            stale.append(name)
    assert not stale, f"docs/api entries naming nothing: {stale}"


def test_namespaces_are_complete():
    # A name in a public namespace that the package does not re-export from its
    # private module would be documented but unusable; and `dir()` of each
    # namespace must not leak private helpers under public names.
    for ns in NAMESPACES:
        mod = getattr(fs, ns)
        for name in _public(mod):
            assert hasattr(mod, name), f"fs.{ns}.__all__ lists {name!r} but it is missing"


def test_nav_pages_exist():
    text = (ROOT / "mkdocs.yml").read_text()
    pages = re.findall(r":\s+([\w./-]+\.md)\s*$", text, re.M)
    assert len(pages) >= 10, pages
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml nav names missing pages: {missing}"


@pytest.mark.parametrize("page", ["index.md", "getting-started.md", "science.md"])
def test_pages_link_to_existing_files(page):
    text = (DOCS / page).read_text()
    for target in re.findall(r"\]\(([^)#:]+\.(?:md|png))(?:#[^)]*)?\)", text):
        assert (DOCS / page).parent.joinpath(target).resolve().is_file(), (page, target)


def _python_blocks(page: pathlib.Path) -> list[str]:
    # Fenced blocks, also indented ones (inside list items).
    return [textwrap.dedent(b) for _, b in re.findall(r"^( *)```python\n(.*?)^\1```", page.read_text(), flags=re.S | re.M)]


# Examples run verbatim, with the names a page assumes defined first: a renamed
# argument or a metric that does not apply (the ensembles guide's first example
# asked for the margin of a tanh network) fails here, not in a reader's hands.
RUNNABLE = [
    ("README.md", 0, ""),
    ("docs/guide/ensembles.md", 0,
     "import jax\njax.config.update('jax_enable_x64', True)\nimport flowsolve as fs\n"
     "X, y = fs.datasets.separable_gaussian(n=20, d=3, seed=0)\n"),
]


# Guide pages whose examples build on each other run as one script, after the
# set-up they take for granted (the problem of the README, and a flow, a
# natural-gradient flow, a GD run and held-out data to compare). The natural-gradient
# page's first example once solved the empirical-Fisher flow past its finite blow-up
# time (100 000 steps, minutes); it now solves the default flow (~10 s with the set-up).
GUIDE_SETUP = """
import jax
jax.config.update("jax_enable_x64", True)
import optax
import flowsolve as fs
X, y = fs.datasets.separable_gaussian(n=200, d=50, seed=0)
X_test, y_test = fs.datasets.separable_gaussian(n=100, d=50, seed=1)
model = fs.models.Linear(50)
problem = fs.Problem(model, fs.losses.Logistic(), X, y)
flow = fs.GradientFlow(problem)
svm = fs.reference.max_margin(X, y, norm=2)
sol = gf = fs.solve(flow, model, log_t1=1000.0, clock="log", metrics=("loss", "log_loss", "margin"))
ngf_sol = ngf = fs.solve(fs.NaturalGradientFlow(problem), model, t1=1e4, metrics=("log_loss", "margin"))
gd = fs.descend(problem, model, lr=1.0, steps=10_000, metrics=("log_loss", "margin"))
"""
GUIDES = ["solving", "long-horizons", "descend-and-compare", "plots", "problems", "natural-gradient"]


@pytest.mark.parametrize("guide", GUIDES)
def test_guide_examples_run(guide, tmp_path):
    blocks = _python_blocks(DOCS / "guide" / f"{guide}.md")
    assert blocks
    _run(GUIDE_SETUP + "\n".join(textwrap.dedent(b) for b in blocks), tmp_path)


def _run(code: str, cwd) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("page, index, preamble", RUNNABLE, ids=[f"{p}#{i}" for p, i, _ in RUNNABLE])
def test_examples_run_verbatim(page, index, preamble, tmp_path):
    _run(preamble + _python_blocks(ROOT / page)[index], tmp_path)
