"""
Charts: drawing plots (:mod:`.svg`, SVG and HTML panels), the arithmetic of
plot rollups (:mod:`.rollup`) and the time ranges users write (:mod:`.timerange`).

Pure functions and small values: no I/O, no Twisted.  The reads that feed
them live in the store; the resources that serve them in :mod:`co2logd.web`.
"""
