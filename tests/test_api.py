"""The public API: every function and method a user calls is documented and
typed, and the type hints ship with the package (PEP 561)."""

from __future__ import annotations

import inspect
from importlib import resources

import pytest

import fastmlp
from fastmlp import datasets


def _public_callables():
    """``(name, callable)`` for every public function, class constructor and
    method of ``fastmlp`` and ``fastmlp.datasets``, as defined there."""
    for module in (fastmlp, datasets):
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.isclass(obj):
                if callable(obj):
                    yield name, obj
                continue
            for attribute, member in vars(obj).items():
                if attribute == "__init__" or (
                    not attribute.startswith("_") and inspect.isfunction(member)
                ):
                    yield f"{name}.{attribute}", member


PUBLIC = dict(_public_callables())


def test_the_public_api_is_found():
    # Guards the walk above: these must be among what it checks.
    for name in ("train", "gradient_descent", "load_model", "Model.predict_proba",
                 "FastMLPClassifier.fit", "FastMLPClassifier.__init__",
                 "DivergenceError.__init__", "load"):  # fmt: skip
        assert name in PUBLIC


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_callables_have_type_hints_and_a_docstring(name):
    function = PUBLIC[name]
    signature = inspect.signature(function)
    unannotated = [
        p.name
        for p in signature.parameters.values()
        if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty
    ]
    assert not unannotated, f"{name}: parameters without a type hint: {unannotated}"
    assert signature.return_annotation is not inspect.Signature.empty, f"{name}: no return type"
    if not name.endswith("__init__"):  # a class documents its constructor
        assert inspect.getdoc(function), f"{name} has no docstring"


def test_the_type_hints_ship_with_the_package():
    assert resources.files("fastmlp").joinpath("py.typed").is_file()
