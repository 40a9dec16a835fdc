from twisted.application.service import ServiceMaker

co2logd = ServiceMaker("co2logd", "co2logd.tap", "CO2 and environmental sensor data-logging daemon", "co2logd")
