"""
Finding the backend that C{[shim] backend} names, and checking it before the shim runs.

C{backend} is either the name of a plugin (an L{IBackendPlugin} in the L{shim.plugins}
package, such as C{dummy}) or an import path C{package.module:ClassName}.  Either way
the class is called with the C{[backend]} section as a dict of strings, and the object
it returns must provide every method of L{IBackend}.  Any problem is a L{ConfigError}
naming the file and C{[shim] backend}, so that a misconfigured shim stops at start-up
rather than at its first bind request.
"""

import importlib

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer
from zope.interface.exceptions import (
    BrokenImplementation,
    BrokenMethodImplementation,
    DoesNotImplement,
    Invalid,
    MultipleInvalid,
)
from zope.interface.verify import verifyObject

from shim.config import ConfigError
from shim.interfaces import IBackend, IBackendPlugin

WHERE = "[shim] backend"


@implementer(IPlugin, IBackendPlugin)
class BackendPlugin:
    """
    A plugin naming a backend class; put one at module level in a module of
    L{shim.plugins} to make the backend available by name.
    """

    def __init__(self, name, backend_class):
        self.name = name
        self.backend_class = backend_class

    def __repr__(self):
        return "BackendPlugin(%r, %s.%s)" % (
            self.name, self.backend_class.__module__, self.backend_class.__qualname__)


def _plugins():
    """
    The backend plugins, by name.
    """
    import shim.plugins

    return {plugin.name: plugin for plugin in getPlugins(IBackendPlugin, shim.plugins)}


def available_backends():
    """
    The names of the backend plugins, sorted.
    """
    return sorted(_plugins())


def load_backend(config):
    """
    Make the backend that C{config.backend} names.

    @param config: a L{shim.config.ShimConfig}.
    @return: the backend, an object providing L{IBackend}.
    @raise ConfigError: the backend cannot be found, made, or does not provide
        L{IBackend}.
    """
    name = config.backend

    def fail(problem):
        return ConfigError(config.path, WHERE, "%r: %s" % (name, problem))

    if ":" in name:
        cls = _import_class(name, fail)
    else:
        plugins = _plugins()
        if name not in plugins:
            raise fail("no such backend plugin; available: %s (or give an import path "
                       "package.module:ClassName)" % (", ".join(sorted(plugins))
                                                      or "none",))
        cls = plugins[name].backend_class
    if not callable(cls):
        raise fail("%r is not a class" % (cls,))
    try:
        backend = cls(dict(config.backend_options))
    except Exception as e:
        raise fail("the backend class raised %s: %s" % (type(e).__name__, e))
    try:
        verifyObject(IBackend, backend)
    except Invalid as e:
        raise fail("does not implement IBackend: %s" % (_describe_invalid(e),))
    return backend


def _import_class(name, fail):
    """
    The object at C{package.module:ClassName}.
    """
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise fail("an import path must look like package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise fail("cannot import %s: %s: %s" % (module_name, type(e).__name__, e))
    found = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise fail("module %s has no attribute %s" % (module_name, attribute))
    return found


def _describe_invalid(error):
    """
    One line saying what verifyObject found wrong, naming the methods concerned.
    """
    if isinstance(error, MultipleInvalid):
        return "; ".join(_describe_invalid(e) for e in error.exceptions)
    if isinstance(error, BrokenMethodImplementation):
        return "method %s has the wrong signature (%s)" % (
            getattr(error.method, "__name__", error.method), error.mess)
    if isinstance(error, BrokenImplementation):
        return "method %s is missing" % (getattr(error.name, "__name__", error.name),)
    if isinstance(error, DoesNotImplement):
        return ("the object does not declare that it provides IBackend; decorate its "
                "class with @implementer(IBackend)")
    return " ".join(str(error).split())
