"""bulkcred: async bulk jobs for the privileged credentials of a ZPA tenant.

The client (``ZPAClient`` and its auth classes) is usable on its own; the jobs live in
``bulkcred.jobs`` (``rotate``, ``importcsv``, ``migrate``, ``audit``, ``export``).
"""

__version__ = "0.1.0"

from .auth import LegacyApiKey, OneApiClientSecret, OneApiPrivateKey, StaticToken
from .client import ClientStats, ZPAClient
from .config import Rate
from .errors import (
    APIError,
    AuthError,
    BadRequest,
    BulkcredError,
    Conflict,
    ConnectError,
    InputError,
    Interrupted,
    JournalCorrupt,
    JournalError,
    JournalLocked,
    JournalMismatch,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    RateLimited,
    SecretSinkError,
    ServerError,
    TransportError,
    UsageError,
    WaitTooLong,
    ZPAError,
)
from .journal import Journal, JournalState, replay
from .models import (
    UNSET,
    Credential,
    CredentialSecret,
    CredentialType,
    Microtenant,
    PolicyRule,
    Secret,
)
from .secrets import SecretSink, read_sink

__all__ = [
    "UNSET",
    "APIError",
    "AuthError",
    "BadRequest",
    "BulkcredError",
    "ClientStats",
    "Conflict",
    "ConnectError",
    "Credential",
    "CredentialSecret",
    "CredentialType",
    "InputError",
    "Interrupted",
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "JournalLocked",
    "JournalMismatch",
    "JournalState",
    "LegacyApiKey",
    "Microtenant",
    "NotFound",
    "OneApiClientSecret",
    "OneApiPrivateKey",
    "OutcomeUnknown",
    "PermissionDenied",
    "PolicyRule",
    "Rate",
    "RateLimited",
    "Secret",
    "SecretSink",
    "SecretSinkError",
    "ServerError",
    "StaticToken",
    "TransportError",
    "UsageError",
    "WaitTooLong",
    "ZPAClient",
    "ZPAError",
    "__version__",
    "read_sink",
    "replay",
]
