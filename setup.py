"""Packages only (the metadata is in pyproject.toml): the library ``avret`` and its command line.

The command line keeps its folder ``cli/`` in the repository but installs as ``avret_cli``, so the
wheel puts no generic top-level ``cli`` package into anyone's site-packages.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["avret", "avret.*"]), "avret_cli"],
    package_dir={"avret_cli": "cli"},
)
