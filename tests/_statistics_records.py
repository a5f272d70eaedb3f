"""Counting the scene-statistics records a restore makes."""

from __future__ import annotations

from rsrestore.models.dsrdmpd import shared_statistics


def count_records(monkeypatch) -> list:
    """A list that gets one entry per :func:`shared_statistics.recording` made while ``monkeypatch`` is active."""
    records = []
    real_recording = shared_statistics.recording

    def counted_recording(*args):
        records.append(args)
        return real_recording(*args)

    monkeypatch.setattr(shared_statistics, "recording", counted_recording)
    return records
