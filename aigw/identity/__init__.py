"""Microsoft Entra ID tokens for targets without keys (``auth.azure_use_managed_identity``).

``IdentityRegistry`` (app-owned) hands out one ``TokenSource`` per identity;
``TokenSource.token()`` is the ``Authorization: Bearer`` value, and
``TokenUnavailable`` the error that becomes a 502 naming the token endpoint.
"""

from .credentials import SCOPE, Identity, identity_of
from .registry import IdentityRegistry
from .tokens import TokenSource, TokenUnavailable

__all__ = [
    "SCOPE",
    "Identity",
    "IdentityRegistry",
    "TokenSource",
    "TokenUnavailable",
    "identity_of",
]
