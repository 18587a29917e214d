"""Command-line tools run as files from the repo root (python scripts/NAME.py); importable for tests."""
