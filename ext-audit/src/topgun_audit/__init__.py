"""topgun-audit: a tamper-evident audit log for the topgun server.

Authentications (successes and failures), every applied or rejected write, permission
denials, admin actions and disconnects are appended, off the op path, to hash-chained
JSON Lines files; `topgun audit verify` detects any modified, deleted, inserted or
reordered entry.
"""

from topgun_audit.chain import GENESIS, Problem, Verification, entries, verify
from topgun_audit.config import AuditConfig
from topgun_audit.log import AuditLog, AuditLogClosed

__all__ = [
    "GENESIS",
    "AuditConfig",
    "AuditLog",
    "AuditLogClosed",
    "Problem",
    "Verification",
    "entries",
    "verify",
]
