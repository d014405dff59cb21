"""Paths and small builders shared by the tests."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EVENTS = REPO / "events"
