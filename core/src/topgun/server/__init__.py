"""The topgun server: configuration, authentication and authorization, and the
transport-free core (`Server`: sessions, writes, events, Merkle sync, storage).
"""

from topgun.server.auth import (
    AuthError,
    JWTVerifier,
    KeyConfigError,
    TokenPrincipal,
    wall_clock_ms,
)
from topgun.server.config import (
    CLI_FLAGS,
    AuthConfig,
    CliFlag,
    CoalescingConfig,
    ConfigError,
    ConfigWarning,
    ConnectionLimits,
    HLCConfig,
    Secret,
    ServerConfig,
    StorageConfig,
    TLSConfig,
    config_options,
    config_sections,
    environment_variables,
    load_config,
    read_config,
    validate_config,
)
from topgun.server.inmemory import ConnectionClosed, InMemoryClient, InMemoryTransport
from topgun.server.metrics import ServerMetrics
from topgun.server.permissions import (
    ADMIN_ROLE,
    ALL_FIELDS,
    NO_ACCESS,
    SYSTEM_PREFIX,
    WITHHELD,
    Action,
    FieldFilter,
    Policy,
    PolicySet,
    Withheld,
)
from topgun.server.security import Security
from topgun.server.server import Server
from topgun.server.session import Session
from topgun.server.transport import Transport

__all__ = [
    "ADMIN_ROLE",
    "ALL_FIELDS",
    "CLI_FLAGS",
    "NO_ACCESS",
    "SYSTEM_PREFIX",
    "WITHHELD",
    "Action",
    "AuthConfig",
    "AuthError",
    "CliFlag",
    "CoalescingConfig",
    "ConfigError",
    "ConfigWarning",
    "ConnectionClosed",
    "ConnectionLimits",
    "FieldFilter",
    "HLCConfig",
    "InMemoryClient",
    "InMemoryTransport",
    "JWTVerifier",
    "KeyConfigError",
    "Policy",
    "PolicySet",
    "Secret",
    "Security",
    "Server",
    "ServerConfig",
    "ServerMetrics",
    "Session",
    "StorageConfig",
    "TLSConfig",
    "TokenPrincipal",
    "Transport",
    "Withheld",
    "config_options",
    "config_sections",
    "environment_variables",
    "load_config",
    "read_config",
    "validate_config",
    "wall_clock_ms",
]
