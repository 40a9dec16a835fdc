"""
The column → senseBox/sensor mapping: co2logserver 0.1.2's rules, as outbox entries.
"""

import datetime
import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from co2logd.osem.mapping import Entry, outbox_entries_for
from co2logd.settings import Settings

UTC = datetime.timezone.utc
NOW = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def entries_for(rows, **values):
    """Run the mapping over ``rows`` with forwarding on and the given settings."""
    clock = Clock()
    clock.advance(NOW)
    settings = Settings.from_values(dict({"OSEM_UPLOAD": True}, **values), environ={})
    mapper = outbox_entries_for(settings, clock)
    texts, count = mapper(rows)
    return [Entry.decode(t) for t in texts], count


def at(seconds_before_now):
    """An aware UTC datetime some seconds before NOW."""
    return datetime.datetime.fromtimestamp(NOW - seconds_before_now, UTC)


class MappingTests(SynchronousTestCase):
    """What becomes a sensor, a box and a measurement."""

    def test_off_means_no_outbox(self):
        """With OSEM_UPLOAD off there is no outbox function at all."""
        settings = Settings.from_values({}, environ={})
        self.assertIsNone(outbox_entries_for(settings, Clock()))

    def test_sensor_columns(self):
        """type_quantity_unit columns become sensors: title = quantity, unit converted, icon chosen."""
        entries, count = entries_for(
            [{"scd30_co2_ppm": 412.5, "sht_temperature_c": 21.25, "sht_humidity_percent": 40, "note": "x"}]
        )
        self.assertEqual(count, 3)
        (entry,) = entries
        self.assertEqual(
            sorted(s.as_list() for s in entry.sensors),
            [
                ["co2", "ppm", "scd30", "osem-not-available", 412.5],
                ["humidity", "%", "sht", "osem-humidity", 40],
                ["temperature", "°C", "sht", "osem-temperature-celsius", 21.25],
            ],
        )

    def test_box_defaults(self):
        """Without a box column the default box is used and named by the generator."""
        (entry,), _ = entries_for([{"a_co2_ppm": 1}])
        self.assertEqual(entry.box, "generic")
        self.assertEqual(entry.name, "co2logserver senseBox generic")
        self.assertEqual(entry.exposure, "mobile")

    def test_box_column_and_hooks(self):
        """The box column, name generator, exposure determiner and NAME are honoured."""
        (entry,), _ = entries_for(
            [{"box": "indoor", "a_co2_ppm": 1}],
            NAME="site",
            OSEM_BOX_NAME_GENERATOR=lambda servername, box: "{}/{}".format(servername, box),
        )
        self.assertEqual((entry.box, entry.name, entry.exposure), ("indoor", "site/indoor", "indoor"))

    def test_box_zero_is_a_box(self):
        """A box value of 0 is a box, as in co2logserver (not the default)."""
        (entry,), _ = entries_for([{"box": 0, "a_co2_ppm": 1}])
        self.assertEqual(entry.box, 0)

    def test_box_redirect(self):
        """OSEM_BOX_REDIRECT false → the row is not queued."""
        entries, count = entries_for(
            [{"box": "a", "x_co2_ppm": 1}, {"box": "b", "x_co2_ppm": 2}],
            OSEM_BOX_REDIRECT=lambda box: box != "a",
        )
        self.assertEqual([e.box for e in entries], ["b"])
        self.assertEqual(count, 1)

    def test_col_redirect_and_value_filter(self):
        """OSEM_COL_REDIRECT drops columns; values are rounded to 3 places by default."""
        (entry,), count = entries_for(
            [{"x_co2_ppm": 1.23456, "x_temp_c": 3}], OSEM_COL_REDIRECT=lambda col: "co2" in col
        )
        self.assertEqual(count, 1)
        self.assertEqual(entry.sensors[0].value, 1.235)

    def test_rows_without_measurements_are_not_queued(self):
        """Rows with no forwardable, numeric value are left out; None and text are skipped."""
        entries, count = entries_for([{"note": "x"}, {"x_co2_ppm": None}, {"x_co2_ppm": "high"}])
        self.assertEqual((entries, count), ([], 0))

    def test_position_columns(self):
        """lat/lon/height are taken when valid; out of range or text is ignored."""
        (good, bad), _ = entries_for(
            [
                {"lat": 48.5, "lon": 120.0, "height": 300, "x_co2_ppm": 1},
                {"lat": 95, "lon": "east", "x_co2_ppm": 1},
            ]
        )
        self.assertEqual((good.lat, good.lon, good.height), (48.5, 120.0, 300.0))
        self.assertEqual((bad.lat, bad.lon, bad.height), (None, None, None))

    def test_time_column(self):
        """A converted time column gives the measurement time; without one, now."""
        (timed, untimed), _ = entries_for([{"time": at(60), "x_co2_ppm": 1}, {"x_co2_ppm": 1}])
        self.assertEqual(timed.time, NOW - 60)
        self.assertEqual(untimed.time, NOW)

    def test_future_and_too_recent_are_skipped(self):
        """co2logserver skips measurements younger than OSEM_MIN_SECONDS_BETWEEN_UPLOADS (future ones always)."""
        entries, _ = entries_for([{"time": at(-10), "x_co2_ppm": 1}, {"time": at(10), "x_co2_ppm": 2}])
        self.assertEqual([e.sensors[0].value for e in entries], [2])
        entries, _ = entries_for(
            [{"time": at(10), "x_co2_ppm": 1}, {"time": at(100), "x_co2_ppm": 2}],
            OSEM_MIN_SECONDS_BETWEEN_UPLOADS=30,
        )
        self.assertEqual([e.sensors[0].value for e in entries], [2])

    def test_failing_hook_skips_row(self):
        """A hook that raises skips that row; the others are still queued."""

        def exposure(box):
            if box == "bad":
                raise RuntimeError("no")
            return "outdoor"

        entries, count = entries_for(
            [{"box": "bad", "x_co2_ppm": 1}, {"box": "ok", "x_co2_ppm": 2}], OSEM_EXPOSURE_DETERMINER=exposure
        )
        self.assertEqual([e.box for e in entries], ["ok"])
        self.assertEqual(count, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_entry_round_trip(self):
        """An entry is compact JSON and decodes to the same content."""
        (entry,), _ = entries_for([{"x_co2_ppm": 1}])
        text = entry.encode()
        self.assertEqual(json.loads(text)["sensors"], [["co2", "ppm", "x", "osem-not-available", 1.0]])
        self.assertEqual(Entry.decode(text).encode(), text)
