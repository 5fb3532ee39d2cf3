"""Writes of the governance app, one module per subject, re-exported here."""

from governance.services.metering import (
    GatewayMeter,
    IdempotencyConflict,
    activity_ingest,
    idempotency_purge,
    metering_compact_step,
    sketch_ingest,
)

__all__ = [
    "GatewayMeter",
    "IdempotencyConflict",
    "activity_ingest",
    "idempotency_purge",
    "metering_compact_step",
    "sketch_ingest",
]
