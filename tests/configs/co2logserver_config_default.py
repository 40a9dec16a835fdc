# co2logserver 0.1.2's default configuration, reconstructed for co2logd's tests
# from the behaviour sheet (docs in the original are shortened here): the
# same header (stdlib imports and `from co2logserver.utils import *`), every
# key with its default, hooks as plain functions calling the utils helpers,
# generators as bound str.format methods, regexes pre-compiled.  A user copies
# this file and edits values; co2logd must run it as it is.
import os
import re
import math
import logging
from co2logserver.utils import *

__doc__ = """
The default configuration values.
"""

CO2LOGSERVER_NAME = "co2logserver"
"""the name of this server"""

CO2LOGSERVER_DB = "co2.sqlite"
"""the database file"""

CO2LOGSERVER_LOGLEVEL = logging.WARNING
CO2LOGSERVER_SENSEMAPI_LOGLEVEL = logging.WARNING

CO2LOGSERVER_CHECKSUM_SALTS = []
"""salts the salted payload checksums are checked against"""

CO2LOGSERVER_UPLOAD_REQUIRES_AUTH = False
CO2LOGSERVER_DOWNLOAD_REQUIRES_AUTH = False
CO2LOGSERVER_UPLOAD_HELP = True


def CO2LOGSERVER_AUTH_CHECKER(x):
    """Grant when at least one checksum was given and all of them matched."""
    return len(x) and all(x.values())


CO2LOGSERVER_DATA_TABLE_NAME = "data"
CO2LOGSERVER_MATCHED_CHECKSUMS_COL = "matched_checksums"
CO2LOGSERVER_FAILED_CHECKSUMS_COL = "failed_checksums"
CO2LOGSERVER_UPLOAD_TIME_COL = "time_upload_utc"

CO2LOGSERVER_TIME_COLS = ["time"]
"""columns converted with CO2LOGSERVER_TIME_CONVERTER"""


def CO2LOGSERVER_TIME_CONVERTER(val, col):
    """UNIX seconds in UTC → datetime, with the utils helper."""
    return utc_datetime_from_unix_timestamp(val)


CO2LOGSERVER_MAX_LIMIT_OF_ROWS = 1000


def CO2LOGSERVER_ACCEPT_NEW_COLUMN(col):
    """Every new column is accepted."""
    return True


CO2LOGSERVER_ALLOW_EMPTY_ROWS = False

CO2LOGSERVER_OSEM_UPLOAD = False
CO2LOGSERVER_OSEM_API = os.environ.get("SENSEMAP_API")
CO2LOGSERVER_OSEM_USERNAME = os.environ.get("SENSEMAP_USERNAME")
CO2LOGSERVER_OSEM_EMAIL = os.environ.get("SENSEMAP_EMAIL")
CO2LOGSERVER_OSEM_PASSWORD = os.environ.get("SENSEMAP_PASSWORD")
CO2LOGSERVER_OSEM_AUTH_CACHE = True
CO2LOGSERVER_OSEM_REQUEST_CACHE = True
CO2LOGSERVER_OSEM_CACHE_PASSWORD = False


def CO2LOGSERVER_OSEM_COL_REDIRECT(col):
    """Every column goes to the OpenSenseMap."""
    return True


def CO2LOGSERVER_OSEM_BOX_REDIRECT(box):
    """Every box goes to the OpenSenseMap."""
    return True


def CO2LOGSERVER_OSEM_VALUE_FILTER(box, col, val):
    """Values rounded to 3 places."""
    return round(val, 3)


CO2LOGSERVER_OSEM_BOX_COL = "box"
CO2LOGSERVER_OSEM_BOX_COL_DEFAULT = "generic"
CO2LOGSERVER_OSEM_LAT_COL = "lat"
CO2LOGSERVER_OSEM_LON_COL = "lon"
CO2LOGSERVER_OSEM_HEIGHT_COL = "height"


def CO2LOGSERVER_DEFAULT_LAT(box):
    """No fallback latitude."""
    return None


def CO2LOGSERVER_DEFAULT_LON(box):
    """No fallback longitude."""
    return None


CO2LOGSERVER_OSEM_TIME_COL = next(iter(CO2LOGSERVER_TIME_COLS), "time")
CO2LOGSERVER_OSEM_MIN_SECONDS_BETWEEN_UPLOADS = 0


def CO2LOGSERVER_OSEM_EXPOSURE_DETERMINER(box):
    """The first of indoor/outdoor/mobile containing the box value, else mobile."""
    return next((x for x in ("indoor", "outdoor", "mobile") if box in x), "mobile")


CO2LOGSERVER_OSEM_DEFAULT_WEBLINK = "https://gitlab.com/tue-umphy/co2mofetten/python3-co2logserver"
CO2LOGSERVER_OSEM_DEFAULT_DESCRIPTION = (
    "This senseBox was automatically created by an instance of co2logserver, "
    "a simple Python HTTP data logging server, named '{servername}'."
)

CO2LOGSERVER_OSEM_COL_REGEX = re.compile(
    r"^(?P<type>[^_]+)_(?P<quantity>[^_]+)_(?P<unit>.*)$"
)

CO2LOGSERVER_OSEM_BOX_NAME_GENERATOR = "{servername} senseBox {box}".format
CO2LOGSERVER_OSEM_SENSOR_TITLE_GENERATOR = "{quantity}".format


def CO2LOGSERVER_OSEM_UNIT_COVERTER(x):
    """Short unit names → the OpenSenseMap's."""
    return {"c": "°C", "percent": "%", "perc": "%"}.get(x.lower(), x)


CO2LOGSERVER_OSEM_ICONS = [
    "osem-moisture", "osem-temperature-celsius", "osem-temperature-fahrenheit",
    "osem-thermometer", "osem-windspeed", "osem-sprinkles", "osem-brightness",
    "osem-barometer", "osem-humidity", "osem-not-available", "osem-gauge",
    "osem-umbrella", "osem-clock", "osem-shock", "osem-fire", "osem-volume-up",
    "osem-cloud", "osem-dashboard", "osem-particulate-matter", "osem-signal",
    "osem-microphone", "osem-wifi", "osem-battery", "osem-radioactive",
]


def CO2LOGSERVER_OSEM_ICON_DETERMINER(d):
    """The first icon whose name contains the quantity (a module-level list)."""
    return next(filter(lambda x: d["quantity"] in x, CO2LOGSERVER_OSEM_ICONS), "osem-not-available")


CO2LOGSERVER_OSEM_MAX_POSITION_CHANGE = float("inf")

# static configuration, not to be edited
CO2LOGSERVER_SALTED_CHECKSUM_HEADER_REGEX = re.compile(
    r"Content-(?P<algorithm>\w+)-Salted", re.IGNORECASE
)
