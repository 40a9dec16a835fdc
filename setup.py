"""A shim for tools that still call setup.py; co2logd's metadata is in pyproject.toml."""

from setuptools import setup

setup()
