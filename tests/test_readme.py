"""README is the front door: its generated parts and commands must stay true."""

import os
import re

from twisted.trial import unittest

from co2logd.settings import KEYS, markdown_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


class ReadmeTests(unittest.TestCase):
    """What README promises."""

    def test_settings_table_is_current(self):
        """The settings table is what `python docs/update_readme.py` generates from the code."""
        readme = read("README.md")
        table = re.search(r"<!-- settings table:[^>]*-->\n(.*?)\n<!-- end of settings table -->", readme, re.S)
        self.assertIsNotNone(table)
        self.assertEqual(table.group(1), markdown_table(), "run: python docs/update_readme.py")
        for name in KEYS:
            self.assertIn("`CO2LOGSERVER_{}`".format(name), readme)

    def test_ci_runs_the_readme_test_command(self):
        """.ci/run runs exactly the test command README gives."""
        readme = read("README.md")
        command = re.search(r"## Run the tests\n\n```sh\npip install '\.\[test\]' && (.+)\n```", readme).group(1)
        ci_lines = [line.strip() for line in read(".ci/run").splitlines()]
        self.assertIn(command, ci_lines)

    def test_ci_checks_types_first(self):
        """.ci/run runs mypy over the package before the tests, as README says."""
        self.assertIn("`mypy co2logd`", read("README.md"))
        ci_lines = [line.strip() for line in read(".ci/run").splitlines()]
        self.assertLess(ci_lines.index("mypy co2logd"), ci_lines.index("python -m twisted.trial tests"))

    def test_install_and_run_command(self):
        """The one-command install-and-run line is there, after the virtual environment step Debian 12 needs."""
        readme = read("README.md")
        venv = readme.index("```sh\npython3 -m venv ~/co2logd-venv && . ~/co2logd-venv/bin/activate\n```")
        self.assertLess(venv, readme.index("```sh\npip install . && twistd -n co2logd\n```"))

    def test_layout_matches_the_tree(self):
        """README's Layout names every module and package of co2logd/, and no file that is not there."""
        block = re.search(r"## Layout\n\n```\n(.*?)\n```", read("README.md"), re.S).group(1)
        words = set(re.findall(r"[\w.]+/?", block))
        package = os.path.join(REPO, "co2logd")
        missing = []
        for directory, dirs, files in os.walk(package):
            dirs[:] = [d for d in dirs if d != "__pycache__" and os.path.exists(os.path.join(directory, d, "__init__.py"))]
            relative = os.path.relpath(directory, package)
            if relative != "." and os.path.basename(directory) + "/" not in words:
                missing.append(relative + "/")
            for name in files:
                if name.endswith(".py") and name not in ("__init__.py", "__main__.py") and name not in words:
                    missing.append(os.path.join(relative, name))
        self.assertEqual(missing, [], "add them to README's Layout")
        named = {w for w in words if w.endswith(".py")}
        existing = {name for _, _, files in os.walk(REPO) for name in files}
        self.assertEqual(sorted(named - existing), [], "README's Layout names files that are not there")


class CommentsTests(unittest.TestCase):
    """Comments in the code say why, not which tracker issue asked for it (the tracker is not in the repository)."""

    def test_no_issue_references(self):
        """No "(issue N)", "issue N, finding M" or the like anywhere in co2logd/."""
        found = []
        for directory, _, files in os.walk(os.path.join(REPO, "co2logd")):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    with open(path, encoding="utf-8") as f:
                        for number, line in enumerate(f, 1):
                            if re.search(r"\bissues? \d+|\bfinding \d+", line, re.I):
                                found.append("{}:{}".format(os.path.relpath(path, REPO), number))
        self.assertEqual(found, [])
