"""The licence catalogue shipped as data (licensing/data/catalogue.json) and how it is loaded."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

CATALOGUE_FILE = Path(__file__).resolve().parent / "data" / "catalogue.json"

_VERSION_FIELDS = (
    "name", "licence_name", "release_date_label", "date_ambiguous", "date_note", "mau_threshold", "notice_line",
    "attribution_display", "derived_name_prefix", "derived_name_covers_outputs", "outputs_may_improve_other_models",
    "eu_multimodal_restriction", "licence_url", "licence_sha256", "licence_source", "aup_version", "aup_url",
    "aup_sha256",
)


def catalogue_entries() -> list[dict[str, Any]]:
    return json.loads(CATALOGUE_FILE.read_text(encoding="utf-8"))["versions"]


def catalogue_load(licence_version_model: Any, base_model_model: Any) -> int:
    """Insert the shipped versions that are missing; never overwrite a row an admin may have edited.

    Takes the model classes so the data migration can pass its historical models; a field the model does not have
    yet (an older migration state) is skipped. Returns rows created.
    """
    created = 0
    version_fields = {f.name for f in licence_version_model._meta.get_fields()}
    for entry in catalogue_entries():
        defaults = {field: entry[field] for field in _VERSION_FIELDS if field in version_fields}
        defaults["release_date"] = dt.date.fromisoformat(entry["release_date"])
        # Match on the slug or the name: an admin may have renamed the slug, or added the version first.
        version = (
            licence_version_model.objects.filter(slug=entry["slug"]).first()
            or licence_version_model.objects.filter(name=entry["name"]).first()
        )
        if version is None:
            version = licence_version_model.objects.create(slug=entry["slug"], **defaults)
            created += 1
        for base in entry["base_models"]:
            base_model_model.objects.get_or_create(
                repo_id=base["repo_id"], defaults={"licence_version": version, "multimodal": base["multimodal"]}
            )
    return created
