"""co2logserver's own config_default.py runs unmodified, its co2logserver.utils helpers included."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys

from twisted.internet import defer, threads
from twisted.trial import unittest

from co2logd.settings import legacy_utils
from co2logd.settings import Settings, SettingsError
from tests.helpers import REPO, upload_to_daemon

CONFIG_DEFAULT = os.path.join(REPO, "tests", "configs", "co2logserver_config_default.py")


class LegacyConfigTests(unittest.TestCase):
    """Config files that import co2logserver.utils, without co2logserver installed."""

    def write(self, text: str) -> str:
        path = self.mktemp() + ".py"
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_config_default_as_copied(self):
        """The copied config_default.py loads; its TIME_CONVERTER hook calls the utils helper."""
        s = Settings.from_config_file(CONFIG_DEFAULT, environ={})
        self.assertEqual(str(s.TIME_CONVERTER(1700000000, "time")), "2023-11-14 22:13:20+00:00")
        self.assertEqual(s.OSEM_ICON_DETERMINER({"quantity": "humidity"}), "osem-humidity")
        self.assertEqual(s.OSEM_BOX_NAME_GENERATOR(servername="srv", box="b1"), "srv senseBox b1")
        self.assertNotIn("co2logserver", sys.modules)
        self.assertNotIn("co2logserver.utils", sys.modules)

    def test_import_forms_and_imports_inside_hooks(self):
        """`import co2logserver.utils as u`, `from co2logserver import utils` and imports run by a hook later all work."""
        path = self.write(
            "import co2logserver.utils as u\n"
            "from co2logserver import utils\n"
            "from co2logserver.utils import *\n"
            "CO2LOGSERVER_NAME = '{}-{}'.format(u.unix_timestamp(utils.utc_datetime_from_unix_timestamp(5)), datetime.date(2020, 1, 2))\n"
            "def CO2LOGSERVER_TIME_CONVERTER(val, col):\n"
            "    from co2logserver.utils import utc_datetime_from_unix_timestamp as convert\n"
            "    return convert(str2num(val))\n"
        )
        s = Settings.from_config_file(path, environ={})
        self.assertEqual(s.NAME, "5-2020-01-02")  # `datetime` came with the star import in co2logserver too
        self.assertEqual(str(s.TIME_CONVERTER("43", "time")), "1970-01-01 00:00:43+00:00")
        self.assertNotIn("co2logserver", sys.modules)

    def test_helpers_without_the_import(self):
        """A copy whose import line was removed (as co2logd's README once advised) still converts times."""
        with open(CONFIG_DEFAULT) as f:
            text = f.read().replace("from co2logserver.utils import *\n", "")
        s = Settings.from_config_file(self.write(text), environ={})
        self.assertEqual(str(s.TIME_CONVERTER(43, "time")), "1970-01-01 00:00:43+00:00")

    def test_real_co2logserver_is_not_shadowed(self):
        """With a real co2logserver on sys.path, code outside config files imports the real one."""
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "co2logserver"))
        for name, text in (("__init__.py", ""), ("utils.py", "REAL = True\n")):
            with open(os.path.join(root, "co2logserver", name), "w") as f:
                f.write(text)
        sys.path.insert(0, root)
        self.addCleanup(sys.path.remove, root)
        self.addCleanup(lambda: [sys.modules.pop(m, None) for m in ("co2logserver", "co2logserver.utils")])
        Settings.from_config_file(CONFIG_DEFAULT, environ={})
        import co2logserver.utils

        self.assertTrue(co2logserver.utils.REAL)
        self.assertEqual(os.path.dirname(co2logserver.utils.__file__), os.path.join(root, "co2logserver"))

    def test_other_co2logserver_modules_are_an_error(self):
        """Only co2logserver.utils is provided: another co2logserver module is one clear error."""
        path = self.write("from co2logserver.upload import something\n")
        e = self.assertRaises(SettingsError, Settings.from_config_file, path, environ={})
        self.assertIn("Config file", str(e))
        self.assertNotIn("co2logserver", sys.modules)


class LegacyHelperTests(unittest.TestCase):
    """The helpers behave as co2logserver 0.1.2's."""

    def test_str2num(self):
        """Whole numbers become int, others float, the rest stays as it was."""
        self.assertEqual(
            [legacy_utils.str2num(v) for v in ("12", "1.5", "1.0", "1e3", "abc", 2.5)],
            [12, 1.5, 1.0, 1000.0, "abc", 2.5],
        )
        self.assertIsInstance(legacy_utils.str2num("1.0"), float)

    def test_time_helpers(self):
        """unix_timestamp undoes utc_datetime_from_unix_timestamp; naive datetimes are UTC."""
        dt = legacy_utils.utc_datetime_from_unix_timestamp("1700000000")
        self.assertEqual(legacy_utils.unix_timestamp(dt), 1700000000)
        self.assertEqual(legacy_utils.unix_timestamp(dt.replace(tzinfo=None)), 1700000000)

    def test_salted_checksum_and_tables(self):
        """README's salted checksum; tables and row lists convert both ways."""
        self.assertEqual(
            legacy_utils.salted_checksum('{"time_utc":[43,23],"co2":[1223,2351]}', "my-super-secret-psk", "md5"),
            "b71e91feb2be18ccca019914a1da5b1d",
        )
        table = {"a": [1, 2], "b": [3, 4]}
        rows = legacy_utils.listdict_to_dictlist(table)
        self.assertEqual(rows, [{"a": 1, "b": 3}, {"a": 2, "b": 4}])
        self.assertEqual(legacy_utils.dictlist_to_listdict(rows), table)
        self.assertEqual(legacy_utils.urlencode_multi_dict(table), "a=1&b=3&a=2&b=4")
        self.assertEqual(legacy_utils.csv2table(["a,b", "1,x", "2.5,y"]), {"a": [1, 2.5], "b": ["x", "y"]})


class LegacyConfigDaemonTests(unittest.TestCase):
    """python -m co2logd --config config_default.py, as a co2logserver user would start it."""

    @defer.inlineCallbacks
    def test_upload_time_column_converted(self):
        """A real upload through the daemon started with the copied config stores `time` converted by its hook."""
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        shutil.copy(CONFIG_DEFAULT, os.path.join(cwd, "config.py"))
        argv = [sys.executable, "-m", "co2logd", "--config", "config.py", "--http", "tcp:0:interface=127.0.0.1"]
        environment = dict(os.environ, PYTHONPATH=REPO)
        environment.pop("CO2LOGSERVER_CONFIG", None)
        reply, code, output = yield threads.deferToThread(
            upload_to_daemon, argv, cwd, environment, b'{"time":[1700000000,43],"co2":[600,610]}', cwd + ".output"
        )
        self.assertEqual(reply, {"saved-in-db": 2}, output)
        self.assertNotIn("Traceback", output)
        connection = sqlite3.connect(os.path.join(cwd, "co2.sqlite"))
        self.addCleanup(connection.close)
        self.assertEqual(
            connection.execute("SELECT time, co2 FROM data ORDER BY co2").fetchall(),
            [("2023-11-14 22:13:20+00:00", 600), ("1970-01-01 00:00:43+00:00", 610)],
        )
