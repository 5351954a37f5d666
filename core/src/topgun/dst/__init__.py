"""Deterministic simulation testing: the real server and clients on virtual time.

A seed decides every latency, fault and operation; the same seed replays the same run, trace
and all (see docs/testing.md). The pieces: `loop` (virtual-time event loop), `clock`,
`rng`, `network` (simulated connections and faults), `invariants`, `scenario` (the runner),
`bugs` (deliberate bugs that prove the checks can fail), `cli` (`topgun sim`).
"""
