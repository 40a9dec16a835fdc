"""Settings: co2logserver's keys and defaults, config files, and clear refusals."""

import logging

from twisted.trial import unittest

from co2logd.settings import KEYS, Settings, SettingsError
from tests.helpers import make_settings

CO2LOGSERVER_0_1_2_KEYS = [
    "NAME", "DB", "LOGLEVEL", "SENSEMAPI_LOGLEVEL", "CHECKSUM_SALTS", "UPLOAD_REQUIRES_AUTH",
    "DOWNLOAD_REQUIRES_AUTH", "UPLOAD_HELP", "AUTH_CHECKER", "DATA_TABLE_NAME", "MATCHED_CHECKSUMS_COL",
    "FAILED_CHECKSUMS_COL", "UPLOAD_TIME_COL", "TIME_COLS", "TIME_CONVERTER", "MAX_LIMIT_OF_ROWS",
    "ACCEPT_NEW_COLUMN", "ALLOW_EMPTY_ROWS", "OSEM_UPLOAD", "OSEM_API", "OSEM_USERNAME", "OSEM_EMAIL",
    "OSEM_PASSWORD", "OSEM_AUTH_CACHE", "OSEM_REQUEST_CACHE", "OSEM_CACHE_PASSWORD", "OSEM_COL_REDIRECT",
    "OSEM_BOX_REDIRECT", "OSEM_VALUE_FILTER", "OSEM_BOX_COL", "OSEM_BOX_COL_DEFAULT", "OSEM_LAT_COL",
    "OSEM_LON_COL", "OSEM_HEIGHT_COL", "DEFAULT_LAT", "DEFAULT_LON", "OSEM_TIME_COL",
    "OSEM_MIN_SECONDS_BETWEEN_UPLOADS", "OSEM_EXPOSURE_DETERMINER", "OSEM_DEFAULT_WEBLINK",
    "OSEM_DEFAULT_DESCRIPTION", "OSEM_COL_REGEX", "OSEM_BOX_NAME_GENERATOR", "OSEM_SENSOR_TITLE_GENERATOR",
    "OSEM_UNIT_COVERTER", "OSEM_ICONS", "OSEM_ICON_DETERMINER", "OSEM_MAX_POSITION_CHANGE",
    "SALTED_CHECKSUM_HEADER_REGEX",
]


class DefaultsTests(unittest.TestCase):
    """Every co2logserver key exists with co2logserver's default."""

    def test_every_key_is_known(self):
        """All keys of co2logserver 0.1.2's config_default are settings."""
        self.assertEqual([k for k in CO2LOGSERVER_0_1_2_KEYS if k not in KEYS], [])

    def test_defaults(self):
        """Plain defaults match co2logserver 0.1.2."""
        s = make_settings()
        self.assertEqual(
            (s.NAME, s.DB, s.CHECKSUM_SALTS, s.UPLOAD_REQUIRES_AUTH, s.DATA_TABLE_NAME, s.UPLOAD_TIME_COL,
             s.TIME_COLS, s.MAX_LIMIT_OF_ROWS, s.ALLOW_EMPTY_ROWS, s.OSEM_BOX_COL, s.OSEM_TIME_COL),
            ("co2logserver", "co2.sqlite", [], False, "data", "time_upload_utc", ["time"], 1000, False, "box", "time"),
        )

    def test_default_hooks(self):
        """The default hooks behave as co2logserver's."""
        s = make_settings()
        self.assertFalse(s.AUTH_CHECKER({}))
        self.assertTrue(s.AUTH_CHECKER({"md5": "salt"}))
        self.assertFalse(s.AUTH_CHECKER({"md5": "salt", "sha1": None}))
        self.assertEqual(s.TIME_CONVERTER(43, "time").isoformat(), "1970-01-01T00:00:43+00:00")
        self.assertEqual(s.OSEM_BOX_NAME_GENERATOR(servername="srv", box="b1"), "srv senseBox b1")
        self.assertEqual(s.OSEM_UNIT_COVERTER("C"), "°C")
        self.assertEqual(s.OSEM_ICON_DETERMINER({"quantity": "humidity"}), "osem-humidity")

    def test_credentials_from_environment(self):
        """OpenSenseMap credentials default to the SENSEMAP_* environment variables."""
        s = Settings.from_values({}, environ={"SENSEMAP_EMAIL": "a@b.c", "SENSEMAP_API": "http://127.0.0.1:1/"})
        self.assertEqual((s.OSEM_EMAIL, s.OSEM_API, s.OSEM_PASSWORD), ("a@b.c", "http://127.0.0.1:1/", None))


class ConfigFileTests(unittest.TestCase):
    """co2logserver-style Python config files."""

    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_values_and_hooks(self):
        """Values and hook functions are taken; imports and lower-case names are ignored."""
        path = self.write(
            "import os\n"
            "helper = 3\n"
            "CO2LOGSERVER_NAME = 'garden'\n"
            "CO2LOGSERVER_CHECKSUM_SALTS = ['a', 'b']\n"
            "CO2LOGSERVER_LOGLEVEL = 'DEBUG'\n"
            "def CO2LOGSERVER_ACCEPT_NEW_COLUMN(col):\n"
            "    return col != 'junk' and helper == 3\n"
        )
        s = Settings.from_config_file(path, environ={})
        self.assertEqual((s.NAME, s.CHECKSUM_SALTS, s.LOGLEVEL), ("garden", ["a", "b"], logging.DEBUG))
        self.assertFalse(s.ACCEPT_NEW_COLUMN("junk"))
        self.assertTrue(s.ACCEPT_NEW_COLUMN("co2"))

    def test_overrides_win(self):
        """Command-line overrides beat the file."""
        path = self.write("CO2LOGSERVER_DB = 'file.sqlite'\n")
        self.assertEqual(Settings.from_config_file(path, {"DB": "cli.sqlite"}, environ={}).DB, "cli.sqlite")

    def test_unknown_key_names_the_closest(self):
        """A misspelt key is refused with the closest known name."""
        path = self.write("CO2LOGSERVER_UPLOAD_REQUIRE_AUTH = True\n")
        e = self.assertRaises(SettingsError, Settings.from_config_file, path, environ={})
        self.assertIn("CO2LOGSERVER_UPLOAD_REQUIRE_AUTH", str(e))
        self.assertIn("did you mean CO2LOGSERVER_UPLOAD_REQUIRES_AUTH", str(e))

    def test_wrong_type(self):
        """A value of the wrong type is refused, naming the key and what it must be."""
        for text, word in [
            ("CO2LOGSERVER_CHECKSUM_SALTS = 'abc'\n", "list of strings"),
            ("CO2LOGSERVER_UPLOAD_REQUIRES_AUTH = 'yes'\n", "True or False"),
            ("CO2LOGSERVER_MAX_LIMIT_OF_ROWS = 0\n", "positive"),
            ("CO2LOGSERVER_AUTH_CHECKER = 5\n", "function"),
            ("CO2LOGSERVER_DATA_TABLE_NAME = 'data; drop table x'\n", "column or table name"),
        ]:
            e = self.assertRaises(SettingsError, Settings.from_config_file, self.write(text), environ={})
            self.assertIn(word, str(e))

    def test_unreadable_and_broken_files(self):
        """A missing file or one that raises is reported in one sentence."""
        e = self.assertRaises(SettingsError, Settings.from_config_file, "/nonexistent/co2.conf", environ={})
        self.assertIn("Cannot read config file", str(e))
        e = self.assertRaises(SettingsError, Settings.from_config_file, self.write("1/0\n"), environ={})
        self.assertIn("ZeroDivisionError", str(e))
        e = self.assertRaises(SettingsError, Settings.from_config_file, self.write("x = (\n"), environ={})
        self.assertIn("SyntaxError", str(e))

    def test_co2logd_prefix(self):
        """co2logd's own keys may also be written with the CO2LOGD_ prefix."""
        path = self.write("CO2LOGD_MAX_BODY_SIZE = 1000\n")
        self.assertEqual(Settings.from_config_file(path, environ={}).MAX_BODY_SIZE, 1000)


class RoomsAndKindsTests(unittest.TestCase):
    """Keys are grouped by the part of co2logd that reads them; kinds check and normalise."""

    def test_a_name_in_two_rooms_is_refused(self):
        """A setting defined in two rooms stops the import instead of one silently winning."""
        from co2logd.settings.keys import Key, Room, _all_keys
        from co2logd.settings import kinds

        twice = Key(1, kinds.positive_int, "x")
        e = self.assertRaises(RuntimeError, _all_keys, [Room("a", "A", {"X": twice}), Room("b", "B", {"X": twice})])
        self.assertIn("X is defined twice", str(e))

    def test_every_key_is_in_one_room_in_the_readme_table(self):
        """The generated table has a heading per room and every key once."""
        from co2logd.settings import markdown_table
        from co2logd.settings.keys import ROOMS

        table = markdown_table()
        for room in ROOMS:
            self.assertIn("#### " + room.title + "\n", table)
        for name in KEYS:
            self.assertEqual(table.count("| `CO2LOGSERVER_{}` |".format(name)), 1)

    def test_kinds(self):
        """The shared checks: numbers refuse bool, one_of keeps its spelling, optional adds None."""
        from co2logd.settings import kinds

        self.assertRaises(TypeError, kinds.positive_number, 0)
        self.assertRaises(TypeError, kinds.positive_number, True)
        self.assertEqual(kinds.positive_number(0.5), 0.5)
        self.assertEqual(kinds.one_of("OFF", "FULL")("full"), "FULL")
        self.assertEqual(kinds.one_of("off", "required")("REQUIRED"), "required")
        self.assertRaises(TypeError, kinds.whole_number(1, 10, "1 to 10"), 11)
        self.assertIsNone(kinds.optional_identifier(None))
        e = self.assertRaises(TypeError, kinds.optional_identifier, "1x")
        self.assertIn("or None", str(e))
        self.assertEqual(
            make_settings(SEQUENCE_MEMORY_SECONDS=1.5, DB_SYNCHRONOUS="normal").DB_SYNCHRONOUS, "NORMAL"
        )
