"""The package as pip builds it from pyproject.toml (setuptools backend)."""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import zipfile
from typing import List, Optional, Set, Tuple

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.helpers import REPO

MIN_SETUPTOOLS = 77  # pyproject.toml's SPDX licence string (PEP 639)


def setuptools_missing() -> Optional[str]:
    """Why this environment cannot run pyproject.toml's build backend, or None."""
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed (pip install '.[test]' brings it)"
    if int(setuptools.__version__.split(".")[0]) < MIN_SETUPTOOLS:
        return "setuptools {} is older than {} (pip install '.[test]' brings a newer one)".format(
            setuptools.__version__, MIN_SETUPTOOLS
        )
    return None


# what pip installs besides the Python modules: without these the plugin or the pages are missing
DATA_FILES = [
    "twisted/plugins/co2logd_plugin.py",
    "co2logd/web/static/co2logd.css",
    "co2logd/web/templates/dashboard.html",
    "co2logd/web/openapi.yaml",
]


def _ignore(directory: str, names) -> List[str]:
    return [n for n in names if n in {".git", "build", "dist", "_trial_temp", ".ci-venv", "__pycache__"}
            or n.endswith((".egg-info", ".sqlite", ".lock"))]


def build(workdir: str) -> Tuple[Set[str], List[str], str, str]:
    """
    Build a wheel from a copy of the repository with the PEP 517 hook pip
    calls; return (its files, Requires-Dist, entry points, version).
    """
    source = os.path.join(workdir, "src")
    shutil.copytree(REPO, source, ignore=_ignore)
    script = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    dist = os.path.join(workdir, "dist")
    result = subprocess.run([sys.executable, "-c", script, dist], cwd=source, capture_output=True, timeout=300)
    if result.returncode:
        raise AssertionError("wheel build failed:\n" + (result.stdout + result.stderr).decode())
    name = result.stdout.decode().strip().splitlines()[-1]
    with zipfile.ZipFile(os.path.join(dist, name)) as z:
        files = set(z.namelist())
        info = next(n for n in files if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(z.read(info).decode())
        entry_points = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    return files, metadata.get_all("Requires-Dist"), entry_points, metadata["Version"]


class PackageTests(unittest.TestCase):
    """pyproject.toml yields every module, the plugin, the data files and the pins."""

    skip = setuptools_missing()

    @defer.inlineCallbacks
    def test_built_package(self):
        """The build holds every co2logd module, the twistd plugin and the web files, and no tests."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        files, requires, entry_points, version = yield threads.deferToThread(build, workdir)
        modules = []
        for directory, _, names in os.walk(os.path.join(REPO, "co2logd")):
            modules += [os.path.relpath(os.path.join(directory, n), REPO).replace(os.sep, "/")
                        for n in names if n.endswith(".py")]
        self.assertEqual(sorted(m for m in modules + DATA_FILES if m not in files), [])
        self.assertEqual([n for n in files if n.startswith(("tests/", "benchmarks/", "docs/"))], [])
        # a twisted/__init__.py or twisted/plugins/__init__.py would shadow Twisted's own
        self.assertEqual([n for n in files if n.startswith("twisted/") and n.endswith("__init__.py")], [])
        import co2logd

        self.assertEqual(version, co2logd.__version__)
        self.assertIn('sensemapi==0.5.0; extra == "opensensemap"', requires)
        self.assertIn("twisted[serial]>=25.5", requires)
        self.assertIn("co2logd = co2logd.__main__:main", entry_points)
        self.assertIn("setuptools>=77; extra == \"test\"", requires)
