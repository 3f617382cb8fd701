"""Every ``>>>`` example in fw_optax/ runs and prints what its docstring says."""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import fw_optax

ALL = [
    importlib.import_module(f"fw_optax.{m.name}") for m in pkgutil.iter_modules(fw_optax.__path__)
]
# Modules with no ``>>>`` example would pass trivially (nothing attempted): they are left out.
MODULES = [m for m in ALL if ">>>" in inspect.getsource(m)]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    # Every example written in the module ran: none hides where doctest does not look (a
    # comment, an f-string that is no docstring).
    assert result.attempted == inspect.getsource(module).count(">>>") > 0
    assert result.failed == 0


def test_every_public_function_has_an_example():
    for name in fw_optax.__all__:
        obj = getattr(fw_optax, name)
        if callable(obj) and not isinstance(obj, type):
            assert ">>>" in (obj.__doc__ or ""), name
