"""A loopback ZPA simulator for bulkcred's tests, benchmarks and rehearsals (imports nothing else
from bulkcred: the wire contract is written twice on purpose).

Readings chosen where zpa-api.md says "unconfirmed" (the strict one, so a client that works
here works on either reading), and the sim's own guesses:

- Tokens work only on their own flow: /signin tokens on /mgmtconfig, /oauth2/v1/token tokens on
  /zpa/mgmtconfig. Legacy ``expires_in`` is a string ("3600", "0.5" for sub-second TTLs); OneAPI's
  a number. Tokens are unsigned JWT-shaped strings whose ``exp`` may be fractional.
- Wrong sign-in credentials: 401 ``authentication.failed``. OneAPI token failures: 400 with an
  RFC 6749 body ``{"error", "error_description"}``. A private-key JWT assertion is accepted
  unsigned when well formed, ``iss`` = ``sub`` = client id and not expired (``aud`` unchecked).
- A customerId other than the tenant's: 403 ``authz.customer.mismatch``.
- ``microtenantId`` absent: reads cover the whole tenant; writes (PUT, DELETE, move source) act on
  Default, so a credential of microtenant X can only be changed with ``microtenantId=X``.
  Malformed ids (``null``, ``""``, leading zeros): 400 ``invalid.microtenant``; unknown:
  400 ``microtenant.not.found``. Moves between two non-default microtenants are allowed; a move
  to the current owner is 400 ``invalid.move.target``.
- PUT replaces the object and needs the type's secret (400 ``request.validation.failed``
  otherwise); changing the type: 400 ``credential.type.immutable``; a body ``id`` other than the
  path's: 400. A body ``microtenantId`` is ignored: the query decides.
- Names: at most 255 characters; unique per microtenant after HTML-unescaping, case-insensitive
  (400 ``resource.already.exist``); ``name EQ`` search matches the same way.
- SSH keys: 400 ``invalid.ssh.key`` when not PEM/OpenSSH, encrypted without (or with a wrong)
  passphrase; 400 ``ssh.key.too.large`` for RSA over 2048 bits. Encrypted OpenSSH keys cannot be
  decrypted without the bcrypt module, so one that comes with a passphrase is accepted.
- Deleting or moving a credential used by a credential policy rule: 400 ``credential.in.use``,
  ``params`` the rule names. Rules are not inherited across microtenants.
- Paging: ``pagesize`` above 500 is clamped; page/pagesize < 1 or non-numeric: 400. With no
  match the envelope has no ``list``; past the last page, ``"list": []``. ``sortBy=name`` sorts
  by name, anything else by id; ``sortdir`` is ASC or DSC (``DESC`` is a 400). Unknown search
  fields or operators: 400 ``invalid.search``. ``ownershipType EQ INHERITED`` matches nothing
  in Default or without ``microtenantId``; ``MICROTENANT_SPECIFIC`` there matches every owner's.
- Every API request takes a rate-limit slot before authentication, so 401s and 404s count.

Fault spec (``SimConfig.faults``, ``POST /_sim/faults``): comma-separated ``key=value``:
``5xx=F`` (500/502/503 before applying), ``409=F`` (writes only), ``reset=F`` (connection
dropped before applying), ``lost=F`` (writes only: applied, then the connection dropped),
``latency=20ms`` or ``10ms-50ms``, ``retry_after=13`` (every 429 says ``13s``),
``totalcount=0`` or ``omit``, ``escape=1``, ``throttle_burst=N`` or ``N@K`` (429 for N
consecutive API requests from the K-th, K seeded in 1..10 when absent), ``seed=N``.
F is a fraction of API requests; reset + 5xx + 409 <= 1.
"""

from .app import create_app
from .config import SimConfig
from .faults import FaultConfig, parse_faults
from .server import SimServer, serve

__all__ = ["FaultConfig", "SimConfig", "SimServer", "create_app", "parse_faults", "serve"]
