"""Tests of the streaming image engine (a package, so its conftest does not shadow tests/conftest.py)."""
