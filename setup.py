"""co2logd: an event-driven data-logging daemon for CO2 and other environmental sensors."""

from setuptools import find_packages, setup

setup(
    name="co2logd",
    version="0.1.0",
    description="Twisted data-logging daemon for CO2 sensors; drop-in successor of co2logserver",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="GPL-3.0-or-later",
    python_requires=">=3.9",
    packages=find_packages(include=["co2logd", "co2logd.*"]) + ["twisted.plugins"],
    package_data={"co2logd": ["web/static/*", "web/templates/*", "web/openapi.yaml"], "twisted": ["plugins/co2logd_plugin.py"]},
    include_package_data=True,
    zip_safe=False,
    install_requires=[
        "twisted[serial]>=25.5",
        "msgpack>=1.0",
        "pyserial>=3.5",
        "prometheus_client>=0.17",
    ],
    extras_require={
        "opensensemap": ["sensemapi==0.5.0"],
        "test": ["sensemapi==0.5.0", "hypothesis>=6", "treq>=23", "schemathesis>=4"],
    },
    entry_points={"console_scripts": ["co2logd=co2logd.__main__:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)",
    ],
)
