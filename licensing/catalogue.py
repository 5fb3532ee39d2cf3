"""The licence catalogue shipped as data (licensing/data/catalogue.json) and how it reaches a database.

The file is the source of truth for the versions and base models it ships: loading it creates what is missing
and corrects what differs, field by field, each correction with an audit entry naming the old and new value.
Rows the file does not ship (a version or base model an admin added) are never touched.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CATALOGUE_FILE = Path(__file__).resolve().parent / "data" / "catalogue.json"
CATALOGUE_ACTOR = "catalogue"

_VERSION_FIELDS = (
    "name", "licence_name", "release_date_label", "date_ambiguous", "date_note", "mau_threshold", "notice_line",
    "attribution_display", "derived_name_prefix", "derived_name_covers_outputs", "outputs_may_improve_other_models",
    "eu_multimodal_restriction", "licence_url", "licence_sha256", "licence_source", "aup_version", "aup_url",
    "aup_sha256",
)

# access.audit.audit_record's signature; passed in so the data migration and the command share this code.
AuditWriter = Callable[..., Any]


@dataclass(frozen=True)
class CatalogueChange:
    action: str  # "created" or "updated"
    kind: str  # "LicenceVersion" or "BaseModel"
    key: str  # the version's slug or the base model's repo id
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # field -> {"old": ..., "new": ...}


def catalogue_entries() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(CATALOGUE_FILE.read_text(encoding="utf-8"))["versions"]
    return entries


def catalogue_load(
    licence_version_model: Any, base_model_model: Any, *, audit: AuditWriter | None = None
) -> list[CatalogueChange]:
    """Create the shipped versions and base models that are missing and correct those that differ.

    Takes the model classes so a data migration can pass its historical models; a field the model does not have
    yet (an older migration state) is skipped. With ``audit``, every creation and correction is recorded
    (action ``catalogue.created`` / ``catalogue.updated``, actor ``catalogue``); a row that already matches writes
    nothing. Returns the changes made, in file order.
    """
    changes: list[CatalogueChange] = []
    version_fields = _field_names(licence_version_model)
    base_fields = _field_names(base_model_model)
    for entry in catalogue_entries():
        wanted = {name: entry[name] for name in _VERSION_FIELDS if name in version_fields}
        wanted["release_date"] = dt.date.fromisoformat(entry["release_date"])
        # Match on the slug or the name: an admin may have renamed the slug, or added the version first.
        version = (
            licence_version_model.objects.filter(slug=entry["slug"]).first()
            or licence_version_model.objects.filter(name=entry["name"]).first()
        )
        if version is None:
            version = licence_version_model.objects.create(slug=entry["slug"], **wanted)
            changes.append(_created(version, entry["slug"], wanted, audit))
        else:
            changes.extend(_update(version, version.slug, wanted, audit))
        for base in entry["base_models"]:
            wanted_base = {
                "licence_version": version,
                "multimodal": base["multimodal"],
                "release_date": dt.date.fromisoformat(base["release_date"]) if base.get("release_date") else None,
                "date_note": base.get("date_note", ""),
                "licence_note": base.get("licence_note", ""),
            }
            wanted_base = {name: value for name, value in wanted_base.items() if name in base_fields}
            row = base_model_model.objects.filter(repo_id=base["repo_id"]).first()
            if row is None:
                row = base_model_model.objects.create(repo_id=base["repo_id"], **wanted_base)
                changes.append(_created(row, base["repo_id"], wanted_base, audit))
            else:
                changes.extend(_update(row, row.repo_id, wanted_base, audit))
    return changes


def _field_names(model: Any) -> set[str]:
    return {f.name for f in model._meta.get_fields()}


def _plain(value: Any) -> Any:
    """A value as the audit log and the command's report show it: a related row by its key, a date in ISO form."""
    if hasattr(value, "slug"):
        return value.slug
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _current(row: Any, name: str) -> Any:
    # Compare a foreign key by id, so a stale related instance never counts as a change.
    if name == "licence_version":
        return row.licence_version_id
    return getattr(row, name)


def _wanted(name: str, value: Any) -> Any:
    return value.pk if name == "licence_version" else value


def _created(row: Any, key: str, values: dict[str, Any], audit: AuditWriter | None) -> CatalogueChange:
    change = CatalogueChange(
        action="created", kind=type(row).__name__, key=key,
        fields={name: {"old": None, "new": _plain(value)} for name, value in values.items()},
    )
    _record(row, change, audit)
    return change


def _update(row: Any, key: str, wanted: dict[str, Any], audit: AuditWriter | None) -> list[CatalogueChange]:
    differing = [name for name, value in wanted.items() if _current(row, name) != _wanted(name, value)]
    if not differing:
        return []
    fields = {name: {"old": _plain(getattr(row, name)), "new": _plain(wanted[name])} for name in differing}
    for name in differing:
        setattr(row, name, wanted[name])
    row.save()
    change = CatalogueChange(action="updated", kind=type(row).__name__, key=key, fields=fields)
    _record(row, change, audit)
    return [change]


def _record(row: Any, change: CatalogueChange, audit: AuditWriter | None) -> None:
    if audit is None:
        return
    key_name = "slug" if change.kind == "LicenceVersion" else "repo_id"
    audit(action=f"catalogue.{change.action}", actor=CATALOGUE_ACTOR, obj=row,
          data={key_name: change.key, "changes": change.fields})
