"""co2logd: an event-driven data-logging daemon for CO2 and other environmental sensors."""

__version__ = "0.1.0"
