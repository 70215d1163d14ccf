"""
The shim's backend plugins.

Each module here may hold module-level L{shim.backends.BackendPlugin} objects; the
shim finds them with L{twisted.plugin.getPlugins}.  A vendor package can also add
modules to a C{shim/plugins/} directory of its own anywhere on C{sys.path}: the line
below makes every such directory part of this package, as Twisted's plugin system
intends.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__ = []
