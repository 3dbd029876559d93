"""Experiment files: the schema, its errors (each naming the offending key), and the
example files shipped in examples/."""

import json
from pathlib import Path

import pytest

from flowsolve._experiment import ExperimentError, build, load, parse, parse_dict


EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))

BASE = """
name = "t"
reference = "l2"
metrics = ["loss", "log_loss", "margin"]
[data]
kind = "separable_gaussian"
n = 20
d = 3
[model]
kind = "Linear"
[loss]
kind = "logistic"
[[run]]
label = "GF"
flow = "gradient"
clock = "log"
log_t1 = 100
[[run]]
label = "NGF"
flow = "natural"
t1 = 10
[[run]]
label = "GD"
optimizer = "gd"
lr = 1.0
steps = 100
"""


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"logistic_gf_ngf_gd.toml", "matrix_completion.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(path):
    exp = load(path)
    assert exp.runs and exp.plot.metrics
    built = build(exp)  # data, model, flows, metrics and reference, checked for real
    assert len(built.runs) == len(exp.runs)
    assert built.reference is not None
    # The echo written to summary.json validates again, to the same experiment.
    again = parse_dict(json.loads(json.dumps(exp.echo())))
    assert again.echo() == exp.echo()


def test_base_parses_with_defaults():
    exp = parse(BASE)
    assert [r.label for r in exp.runs] == ["GF", "NGF", "GD"]
    assert [r.kind for r in exp.runs] == ["flow", "flow", "descent"]
    gf, ngf, gd = exp.runs
    assert gf.options == {"flow": "gradient", "clock": "log", "log_t1": 100.0}
    assert ngf.options["clock"] == "linear"  # fs.solve's default
    assert gd.options == {"optimizer": "gd", "lr": 1.0, "steps": 100}
    assert gf.metrics == ("loss", "log_loss", "margin") and gf.saves == 100
    assert exp.plot.metrics == ("log_loss", "margin", "margin_gap")
    assert exp.plot.formats == ("png",)
    assert exp.data == {"kind": "separable_gaussian", "n": 20, "d": 3, "seed": 0}


# (edit of BASE, key named by the error, fragment of the message)
MALFORMED = [
    # wrong types and values
    (
        ("lr = 1.0", 'lr = "fast"'),
        "run[2].lr",
        'expected a positive number, got "fast"',
    ),
    (
        ("steps = 100", "steps = 0"),
        "run[2].steps",
        "expected a positive integer, got 0",
    ),
    (
        ("log_t1 = 100", "log_t1 = 100\nrtol = -1e-8"),
        "run[0].rtol",
        "expected a positive number",
    ),
    (("n = 20", 'n = "many"'), "data.n", 'expected an integer, got "many"'),
    (("n = 20", "n = -3"), "data.n", "positive integer"),  # the library's own check
    (("d = 3", "d = 3\nmargin = true"), "data.margin", "expected a number, got true"),
    # unknown names, with the close match and the valid ones
    (
        ('kind = "separable_gaussian"', 'kind = "seperable_gaussian"'),
        "data.kind",
        'did you mean "separable_gaussian"?',
    ),
    (('kind = "Linear"', 'kind = "Linaer"'), "model.kind", 'did you mean "Linear"?'),
    (
        ('kind = "logistic"', 'kind = "logisitc"'),
        "loss.kind",
        "Valid: logistic, exponential, squared",
    ),
    (
        ('optimizer = "gd"', 'optimizer = "adma"'),
        "run[2].optimizer",
        'did you mean "adam"?',
    ),
    (
        ('clock = "log"', 'clock = "log"\nsolver = "tsit6"'),
        "run[0].solver",
        'did you mean "tsit5"?',
    ),
    (('flow = "natural"', 'flow = "natral"'), "run[1].flow", 'did you mean "natural"?'),
    (('"margin"]', '"margn"]'), "metrics[2]", 'did you mean "margin"?'),
    (('reference = "l2"', 'reference = "l3"'), "reference", "Valid: none, l2, l1"),
    # unknown keys
    (("lr = 1.0", "lrr = 1.0"), "run[2].lrr", 'did you mean "lr"?'),
    (("d = 3", "d = 3\nnoise = 0.1"), "data.noise", "valid keys: n, d, seed, margin"),
    (('reference = "l2"', 'refrence = "l2"'), "refrence", 'did you mean "reference"?'),
    (('kind = "Linear"', 'kind = "Linear"\nkey = 3'), "model.key", "`seed`"),
    (
        ("\nt1 = 10\n", "\nt1 = 10\ndamping = 0.1\nflow_typo = 1\n"),
        "run[1].flow_typo",
        "unknown key",
    ),
    # keys in the wrong place
    (
        ("steps = 100", 'steps = 100\nreference = "l1"'),
        "run[2].reference",
        "top-level key",
    ),
    (
        ("log_t1 = 100", "log_t1 = 100\ndamping = 0.1"),
        "run[0].damping",
        "natural-gradient",
    ),
    (("steps = 100", "steps = 100\nrtol = 1e-6"), "run[2].rtol", "a key of flow runs"),
    # inconsistent or missing
    (("log_t1 = 100", "log_t1 = 100\nt1 = 5.0"), "run[0].log_t1", "not both"),
    (("\nt1 = 10\n", "\n"), "run[1].t1", "missing"),
    (
        ('flow = "natural"', 'flow = "natural"\noptimizer = "gd"'),
        "run[1]",
        "exactly one",
    ),
    (('label = "NGF"', 'label = "GF"'), "run[1].label", "clashes"),
    (
        ('clock = "log"\nlog_t1 = 100', 'clock = "linear"\nlog_t1 = 1000'),
        "run[0].log_t1",
        'overflows float64 on the linear clock; add `clock = "log"`',
    ),
    (('kind = "logistic"', 'kind = "squared"'), "reference", "classification loss"),
    (('[[run]]\nlabel = "GD"', '[run]\nlabel = "GD"'), None, "not valid TOML"),
]


@pytest.mark.parametrize(
    "edit, key, fragment", MALFORMED, ids=[m[1] or "toml" for m in MALFORMED]
)
def test_malformed_file_names_the_key(edit, key, fragment):
    text = _edit(BASE, *edit)
    with pytest.raises(ExperimentError) as info:
        build(parse(text, source="bad.toml"))
    err = info.value
    assert isinstance(err, ValueError)
    assert err.key == key, str(err)
    assert fragment in str(err), str(err)
    assert str(err).startswith("bad.toml: " + (f"{key}: " if key else ""))
    assert "\n" not in str(err)


def test_more_schema_errors():
    def error(text):
        with pytest.raises(ExperimentError) as info:
            build(parse(text))
        return info.value

    # Required constructor arguments come from the library's signatures.
    e = error(_edit(BASE, 'kind = "Linear"', 'kind = "TwoLayer"'))
    assert e.key == "model.width" and "TwoLayer needs `width`" in str(e)
    # Tuple-typed arguments: a list of the right length.
    e = error(
        _edit(
            _edit(
                BASE,
                'kind = "separable_gaussian"\nn = 20\nd = 3',
                'kind = "low_rank_completion"\nshape = [6]',
            ),
            'reference = "l2"',
            'reference = "nuclear"',
        )
    )
    assert e.key == "data.shape" and "a list of 2 integers" in str(e)
    # A fixed-step solver needs dt0.
    e = error(_edit(BASE, 'clock = "log"', 'clock = "log"\nsolver = "euler"'))
    assert e.key == "run[0].dt0"
    # A plot of a quantity nobody records.
    e = error(BASE + '[plot]\nmetrics = ["effective_rank"]\n')
    assert e.key == "plot.metrics[0]" and "no run records" in str(e)
    e = error(
        _edit(BASE, 'reference = "l2"', 'reference = "none"')
        + '[plot]\nmetrics = ["margin_gap"]\n'
    )
    assert e.key == "plot.metrics[0]" and 'reference = "l2"' in str(e)
    # A metric that does not apply to this model, found before anything is solved.
    e = error(_edit(BASE, '"margin"]', '"margin", "conserved"]'))
    assert e.key == "metrics" and "conserved" in str(e)
    e = error(
        _edit(
            BASE,
            'optimizer = "gd"',
            'optimizer = "gd"\nmetrics = ["effective_rank", "conserved"]',
        )
    )
    assert e.key == "run[2].metrics"
    # Non-separable data: no margin (the library's LP check).
    text = _edit(
        BASE,
        'kind = "separable_gaussian"\nn = 20\nd = 3',
        'kind = "two_d_nonlinear"\nn = 20\nkind_ = 1',
    )
    e = error(text)
    assert e.key == "data.kind_"
    e = error(
        _edit(
            _edit(
                BASE,
                'kind = "separable_gaussian"\nn = 20\nd = 3',
                'kind = "two_d_nonlinear/xor"\nn = 30',
            ),
            'reference = "l2"\n',
            "",
        )
    )
    assert e.key == "metrics" and "not linearly separable" in str(e)
    # No runs at all.
    e = error(BASE.split("[[run]]")[0])
    assert e.key == "run" and "[[run]]" in str(e)


def test_default_metrics_drop_what_does_not_apply():
    # No `metrics` anywhere: loss, log_loss and — where it applies — the margin.
    text = _edit(
        _edit(BASE, 'metrics = ["loss", "log_loss", "margin"]\n', ""),
        'kind = "separable_gaussian"\nn = 20\nd = 3',
        'kind = "two_d_nonlinear/xor"\nn = 30',
    )
    text = _edit(text, 'reference = "l2"\n', "")
    built = build(parse(text))
    assert all(r.metrics == ("loss", "log_loss") for r in built.experiment.runs)
    assert built.experiment.plot.metrics == ("log_loss",)


def test_load_reports_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(_edit(BASE, "lr = 1.0", 'lr = "fast"'))
    with pytest.raises(
        ExperimentError,
        match=r'bad\.toml: run\[2\]\.lr: expected a positive number, got "fast"',
    ):
        load(bad)
    with pytest.raises(ExperimentError, match="cannot read"):
        load(tmp_path / "missing.toml")
    # The default name is the file's stem.
    good = tmp_path / "my-study.toml"
    good.write_text(BASE.replace('name = "t"\n', ""))
    assert load(good).name == "my-study"
