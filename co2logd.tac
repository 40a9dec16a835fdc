"""
An example of composing co2logd in Python: ``twistd -ny co2logd.tac``.

The same daemon as ``twistd -n co2logd``: settings from $CO2LOGSERVER_CONFIG
(if set), HTTP on $CO2LOGD_HTTP (default tcp:8080), ./co2.sqlite.  Edit the
calls below to taste.
"""

import os

from twisted.application.service import Application
from twisted.internet import reactor

from co2logd.service import build_service
from co2logd.settings import Settings

config = os.environ.get("CO2LOGSERVER_CONFIG")
settings = Settings.from_config_file(config) if config else Settings.from_values({})

application = Application("co2logd")
build_service(
    settings,
    reactor,
    http=[os.environ.get("CO2LOGD_HTTP", "tcp:8080")],
    # udp=["udp:9999"],
    # serial=["/dev/ttyACM0:9600"],
).setServiceParent(application)
