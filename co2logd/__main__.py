"""``python -m co2logd [options]``: the same as ``twistd -n co2logd [options]``."""

import sys

from twisted.application.service import ServiceMaker
from twisted.scripts.twistd import ServerOptions

CO2LOGD = ServiceMaker("co2logd", "co2logd.tap", "CO2 and environmental sensor data-logging daemon", "co2logd")


class Co2logdServerOptions(ServerOptions):
    """twistd's options with co2logd as a subcommand, found without plugin discovery."""

    # co2logd's Options show this instead of "Usage: twistd [options] co2logd"
    own_synopsis = "Usage: python -m co2logd"

    @property
    def subCommands(self):
        self.loadedPlugins = {CO2LOGD.tapname: CO2LOGD}
        yield (CO2LOGD.tapname, None, lambda: CO2LOGD.options(), CO2LOGD.description)


def main(argv=None) -> None:
    """Run twistd in the foreground (no pid file) with the co2logd service."""
    from twisted.application import app
    from twisted.scripts.twistd import runApp

    argv = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["co2logd", "--nodaemon", "--pidfile=", "co2logd"] + argv
    app.run(runApp, Co2logdServerOptions)


if __name__ == "__main__":
    main()
