"""The package as pip builds it from pyproject.toml (setuptools backend)."""

from __future__ import annotations

import email.parser
import glob
import os
import shutil
import subprocess
import sys
import zipfile
from typing import List, Set, Tuple

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.helpers import REPO

try:
    import setuptools
except ImportError:  # Python ≥ 3.12 venvs come without it
    setuptools = None

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


def _can_build_wheels() -> bool:
    """setuptools ≥ 70.1 builds wheels itself; older ones need the wheel package."""
    try:
        from setuptools.command import bdist_wheel  # noqa: F401
        return True
    except ImportError:
        try:
            import wheel  # noqa: F401
            return True
        except ImportError:
            return False


def _run(argv: List[str], cwd: str) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=300)
    if result.returncode:
        raise AssertionError("build failed: {}\n{}".format(argv, (result.stdout + result.stderr).decode()))
    return result.stdout.decode()


def build(workdir: str) -> Tuple[Set[str], List[str], str, str]:
    """
    Build a copy of the repository as pip does and return (installed files,
    Requires-Dist, entry points, version).  With a wheel-capable setuptools
    this is the PEP 517 ``build_wheel`` hook pip calls; otherwise the same
    ``build`` and ``egg_info`` steps a wheel is made of.
    """
    source = os.path.join(workdir, "src")
    shutil.copytree(REPO, source, ignore=_ignore)
    if _can_build_wheels():
        script = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
        dist = os.path.join(workdir, "dist")
        name = _run([sys.executable, "-c", script, dist], source).strip().splitlines()[-1]
        with zipfile.ZipFile(os.path.join(dist, name)) as z:
            files = set(z.namelist())
            info = next(n for n in files if n.endswith(".dist-info/METADATA"))
            metadata = email.parser.Parser().parsestr(z.read(info).decode())
            entry_points = z.read(info.replace("METADATA", "entry_points.txt")).decode()
        return files, metadata.get_all("Requires-Dist"), entry_points, metadata["Version"]
    lib = os.path.join(workdir, "build")
    _run([sys.executable, "setup.py", "-q", "build", "--build-base", lib, "egg_info", "--egg-base", workdir], source)
    lib = os.path.join(lib, "lib")
    files = {os.path.relpath(os.path.join(d, f), lib).replace(os.sep, "/") for d, _, fs in os.walk(lib) for f in fs}
    (egg,) = glob.glob(os.path.join(workdir, "*.egg-info"))
    requires, section = [], ""
    with open(os.path.join(egg, "requires.txt")) as f:
        for line in f.read().splitlines():
            if line.startswith("["):
                section = line.strip("[]")
            elif line:
                requires.append(line + ('; extra == "{}"'.format(section) if section else ""))
    with open(os.path.join(egg, "entry_points.txt")) as f:
        entry_points = f.read()
    with open(os.path.join(egg, "PKG-INFO")) as f:
        version = email.parser.Parser().parsestr(f.read())["Version"]
    return files, requires, entry_points, version


class PackageTests(unittest.TestCase):
    """pyproject.toml yields every module, the plugin, the data files and the pins."""

    skip = None if setuptools else "setuptools is not installed in this environment (pip uses it in an isolated build)"

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
