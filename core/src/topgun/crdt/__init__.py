"""Conflict-free replicated data types: pure, no I/O, no wall clock (time is injected)."""

from topgun.crdt.records import ZERO, LWWRecord, ORMapRecord, Timestamp

__all__ = ["ZERO", "LWWRecord", "ORMapRecord", "Timestamp"]
