"""co2logd's test suite (run with: python -m twisted.trial tests)."""
