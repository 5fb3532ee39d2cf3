"""Writes of the governance app, one module per subject, re-exported here."""

from governance.services.keys import (
    KEY_PREFIX_MARK,
    KeyRejected,
    api_key_authenticate,
    api_key_create,
    api_key_delete,
    api_key_revoke,
    validate_scopes,
)
from governance.services.metering import (
    GatewayMeter,
    IdempotencyConflict,
    activity_ingest,
    idempotency_purge,
    metering_compact_step,
    sketch_ingest,
)

__all__ = [
    "KEY_PREFIX_MARK",
    "GatewayMeter",
    "IdempotencyConflict",
    "KeyRejected",
    "activity_ingest",
    "api_key_authenticate",
    "api_key_create",
    "api_key_delete",
    "api_key_revoke",
    "idempotency_purge",
    "metering_compact_step",
    "sketch_ingest",
    "validate_scopes",
]
