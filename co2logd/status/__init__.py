"""
What the daemon tells about itself: ``/health`` (:mod:`.health`), ``/metrics``
(:mod:`.metrics`) and the sources heard from (:mod:`.sources`).

Services take part by providing the interfaces of :mod:`.interfaces`; the
resources that serve the reports live in :mod:`co2logd.web.status`.
"""
