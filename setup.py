"""Packaging of gnr_daemon."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "gnr_daemon" / "__init__.py").read_text(),
                    re.M).group(1)

setup(
    name="gnr_daemon",
    version=VERSION,
    description="Shared-state daemon for Genropy web sites (gevent, signed pickle RPC, Redis)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="LGPL-2.1-or-later",
    python_requires=">=3.9",
    packages=find_packages(include=["gnr_daemon", "gnr_daemon.*"]),
    install_requires=[
        "gevent>=22.10",
        "docopt-ng>=0.9",
    ],
    extras_require={
        "redis": ["redis>=5.0", "hiredis>=2.0"],
        "prometheus": ["prometheus-client>=0.17"],
        "test": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6", "redis>=5.0", "hiredis>=2.0",
                 "genropy>=26.10", "Pyro4>=4.80", "supervisor>=4.2", "prometheus-client>=0.17"],
        "bench": ["matplotlib>=3.5", "Pyro4>=4.80"],
    },
    entry_points={
        "console_scripts": ["gnrdaemon = gnr_daemon.cli:main"],
        "gnr.web": ["daemon = gnr_daemon.genropy"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Gevent",
        "Operating System :: POSIX",
    ],
)
