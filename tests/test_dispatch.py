"""The dispatcher's refusal rule, on plain objects (no daemon)."""

import logging

import pytest

from gnr_daemon.dispatch import check_method_name, dispatch, resolve_method
from gnr_daemon.errors import MethodNotFound


class Inner:
    def hello(self):
        return "inner hello"


class Target:
    data = {"a": 1}
    number = 42
    klass = Inner
    logger = logging.getLogger("target")

    def __init__(self):
        self.inner = Inner()
        self.instance_function = lambda: "called"

    def public(self, value=1):
        return value * 2

    def _private(self):
        return "private"

    @property
    def prop(self):
        raise AssertionError("a property getter must never run during dispatch")

    @staticmethod
    def static():
        return "static"

    @classmethod
    def klassmethod(cls):
        return "class"


@pytest.mark.parametrize(
    "name",
    [
        "_private",
        "__class__",
        "__init__",
        "__reduce__",
        "a.b",
        "public.__globals__",
        "",
        " public",
        "public ",
        "pub-lic",
        "püblic",
        "x" * 10_000,
        None,
        42,
        b"public",
    ],
)
def test_hostile_names_rejected(name):
    with pytest.raises(MethodNotFound):
        check_method_name(name)


@pytest.mark.parametrize(
    "name",
    ["data", "number", "klass", "logger", "inner", "instance_function", "prop", "static",
     "klassmethod", "missing"],
)
def test_non_methods_rejected(name):
    with pytest.raises(MethodNotFound):
        resolve_method(Target(), name)


def test_data_attribute_message_says_not_callable():
    with pytest.raises(MethodNotFound, match="not a callable method"):
        resolve_method(Target(), "data")


def test_unknown_name_message():
    with pytest.raises(MethodNotFound, match="unknown method 'missing' on Target"):
        resolve_method(Target(), "missing")


def test_private_name_message():
    with pytest.raises(MethodNotFound, match="private"):
        resolve_method(Target(), "_private")


def test_long_name_rejected_cheaply():
    with pytest.raises(MethodNotFound, match="longer than 128"):
        check_method_name("a" * 10_000)


def test_public_method_called():
    assert dispatch(Target(), "public", (), {"value": 21}) == 42


class Routed:
    def __init__(self):
        self.inner = Inner()

    def own(self):
        return "own"

    def _route(self, name, kwargs):
        if kwargs.pop("to_inner", False):
            return self.inner, name
        return None


def test_route_hook_forwards():
    assert dispatch(Routed(), "hello", (), {"to_inner": True}) == "inner hello"


def test_route_hook_keeps_rule():
    with pytest.raises(MethodNotFound):
        dispatch(Routed(), "__init__", (), {"to_inner": True})


def test_route_hook_none_resolves_target():
    assert dispatch(Routed(), "own", (), {}) == "own"


def test_instance_function_never_cached():
    first = Target()
    with pytest.raises(MethodNotFound):
        resolve_method(first, "instance_function")
    second = Target.__new__(Target)
    with pytest.raises(MethodNotFound):
        resolve_method(second, "instance_function")


def test_instance_dict_shadowing_rejected():
    target = Target()
    assert resolve_method(target, "public")(2) == 4
    target.public = lambda value=1: "shadowed"
    with pytest.raises(MethodNotFound):
        resolve_method(target, "public")
