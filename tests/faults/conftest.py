"""Fault tests reuse the training fixtures: a small prepared dataset and tiny run configs."""

from tests.train.conftest import tiny_data  # noqa: F401  (a fixture, registered by being imported here)
