"""Reflection dispatcher: resolve a method name on a target object and call it.

Trust boundary: the method name, the arguments and the keyword arguments come
from a peer that passed the HMAC check, but they are still checked here before
anything is called. The rule is in ``check_method_name`` and
``resolve_method`` and no setting loosens it:

- the name is a ``str`` of at most ``MAX_METHOD_NAME_LENGTH`` ASCII characters
  that is a plain Python identifier (no dots, no spaces) and does not start
  with ``_``;
- the attribute is looked up statically on the target's class (no
  ``__getattr__`` hook and no property getter runs during the lookup) and must
  be a plain function defined in a class body: data attributes, classes,
  properties, static and class methods, and callable objects stored in
  attributes are never called, and neither is a function stored in the
  instance's ``__dict__``.

Every refusal raises ``MethodNotFound``, which the server sends back as an
ordinary error reply, so the connection stays open.

A target may define ``_route(name, kwargs)`` to forward a name to another
object (the site register uses it for ``register_name=`` routing). The hook
returns ``(object, name)`` or None, and whatever it returns is resolved with
the same rule.
"""

import inspect
import types

from .errors import MethodNotFound

__all__ = ["MAX_METHOD_NAME_LENGTH", "check_method_name", "resolve_method", "dispatch"]

#: Maximum method name length; longer names are rejected before any lookup.
MAX_METHOD_NAME_LENGTH = 128


def _describe_name(name):
    text = repr(name)
    if len(text) > 60:
        text = text[:57] + "..."
    return text


def check_method_name(name):
    """Raise MethodNotFound unless ``name`` may be called remotely."""
    if not isinstance(name, str):
        raise MethodNotFound(
            f"invalid method name {_describe_name(name)}: a method name must be a string"
        )
    if len(name) > MAX_METHOD_NAME_LENGTH:
        raise MethodNotFound(
            f"invalid method name {_describe_name(name)}: longer than "
            f"{MAX_METHOD_NAME_LENGTH} characters"
        )
    if not (name.isascii() and name.isidentifier()):
        raise MethodNotFound(
            f"invalid method name {_describe_name(name)}: only plain ASCII identifiers "
            "can be called"
        )
    if name.startswith("_"):
        raise MethodNotFound(
            f"method {name!r} is private: names starting with '_' are never callable remotely"
        )


# (class, name) -> the plain function the rule accepted; filled on first use.
# Classes are never changed at run time, so an accepted name stays accepted.
_accepted = {}


def resolve_method(target, name):
    """Return the bound method ``name`` of ``target``, or raise MethodNotFound."""
    check_method_name(name)
    return _bind(target, name)


def _bind(target, name):
    cls = type(target)
    function = _accepted.get((cls, name))
    if function is None:
        function = _check_attribute(target, name)
        _accepted[(cls, name)] = function
    # A function stored in the instance dict would shadow the class's method.
    instance_dict = getattr(target, "__dict__", None)
    if instance_dict and name in instance_dict:
        raise MethodNotFound(f"{name!r} on {cls.__name__} is not a callable method")
    return function.__get__(target, cls)


def _check_attribute(target, name):
    # The lookup is on the class, so the instance dict (checked on every
    # call in _bind) never decides what is cached for the class.
    cls = type(target)
    try:
        attribute = inspect.getattr_static(cls, name)
    except AttributeError:
        if name in getattr(target, "__dict__", {}):
            raise MethodNotFound(f"{name!r} on {cls.__name__} is not a callable method") from None
        raise MethodNotFound(f"unknown method {name!r} on {cls.__name__}") from None
    if not isinstance(attribute, types.FunctionType) or name in vars(object):
        raise MethodNotFound(f"{name!r} on {cls.__name__} is not a callable method")
    return attribute


def dispatch(target, name, args, kwargs):
    """Resolve ``name`` on ``target`` (following its ``_route`` hook) and call it."""
    check_method_name(name)
    route = getattr(type(target), "_route", None)
    if route is not None:
        routed = route(target, name, kwargs)
        if routed is not None:
            target, name = routed
            check_method_name(name)
    return _bind(target, name)(*args, **kwargs)
