"""Who is calling, and what they may do in which organisation: the one answer every API view asks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q

from access.models import AffiliateGroup, ApiKey, GroupAdmin, Membership, Organisation, Scope

ROLE_SCOPES: dict[str, frozenset[str]] = {
    Membership.Role.VIEWER: frozenset({Scope.READ}),
    Membership.Role.MEMBER: frozenset({Scope.READ, Scope.WRITE, Scope.INGEST}),
    Membership.Role.ADMIN: frozenset(Scope.values),
    Membership.Role.OWNER: frozenset(Scope.values),
}


@dataclass(frozen=True)
class Principal:
    label: str
    scopes_by_org: dict[int, frozenset[str]]
    api_key: ApiKey | None = None
    user: Any = None
    bound_product_id: int | None = None
    is_staff: bool = False
    _group_by_org: dict[int, int] = field(default_factory=dict)
    #: Groups whose group-wide state (policy, declarations, webhooks, alert acknowledgements) this caller changes.
    admin_group_ids: frozenset[int] = frozenset()

    def organisation_ids(self, scope: str | None = None) -> list[int]:
        return [org for org, scopes in self.scopes_by_org.items() if scope is None or scope in scopes]

    def group_ids(self) -> list[int]:
        return sorted(set(self._group_by_org.values()))

    def is_group_admin(self, group_id: int) -> bool:
        return group_id in self.admin_group_ids

    def has_scope(self, scope: str, organisation_id: int | None = None) -> bool:
        if organisation_id is None:
            return bool(self.organisation_ids(scope))
        return scope in self.scopes_by_org.get(organisation_id, frozenset())


def _managing_organisation_ids(group_ids: set[int], groups: dict[int, AffiliateGroup] | None = None
                               ) -> dict[int, int | None]:
    """Each group's managing organisation (a group whose manager is unset is managed by its first one)."""
    managers: dict[int, int | None] = {}
    for group_id in group_ids:
        group = (groups or {}).get(group_id) or AffiliateGroup.objects.get(pk=group_id)
        managers[group_id] = group.managing_organisation_id_resolved()
    return managers


def principal_for_key(api_key: ApiKey) -> Principal:
    """A key is a group admin when it holds ``admin`` in the group's managing organisation and is not bound
    to one product."""
    org = api_key.organisation
    admin_groups: frozenset[int] = frozenset()
    if Scope.ADMIN in api_key.scopes and api_key.product_id is None:
        if _managing_organisation_ids({org.group_id}, {org.group_id: org.group})[org.group_id] == org.pk:
            admin_groups = frozenset({org.group_id})
    return Principal(
        label=f"api-key:{api_key.prefix}",
        scopes_by_org={org.pk: frozenset(api_key.scopes)},
        api_key=api_key,
        bound_product_id=api_key.product_id,
        _group_by_org={org.pk: org.group_id},
        admin_group_ids=admin_groups,
    )


def principal_for_user(user: Any) -> Principal:
    memberships = list(Membership.objects.filter(
        user=user, organisation__status=Organisation.Status.ACTIVE
    ).select_related("organisation__group"))
    groups = {m.organisation.group_id: m.organisation.group for m in memberships}
    managers = _managing_organisation_ids(set(groups), groups)
    admin_groups = {m.organisation.group_id for m in memberships
                    if m.role in (Membership.Role.ADMIN, Membership.Role.OWNER)
                    and managers[m.organisation.group_id] == m.organisation_id}
    # An appointed group admin keeps the role while a member of an active organisation of the group.
    admin_groups |= set(GroupAdmin.objects.filter(user=user, group_id__in=groups).values_list("group_id", flat=True))
    return Principal(
        label=f"user:{user.get_username()}",
        scopes_by_org={m.organisation_id: ROLE_SCOPES[m.role] for m in memberships},
        user=user,
        is_staff=bool(user.is_staff),
        _group_by_org={m.organisation_id: m.organisation.group_id for m in memberships},
        admin_group_ids=frozenset(admin_groups),
    )


def principal_of(request: Any) -> Principal | None:
    """The caller of a DRF request, computed once per request."""
    cached = getattr(request, "_corral_principal", None)
    if cached is not None:
        return cached
    principal: Principal | None = None
    if isinstance(request.auth, ApiKey):
        principal = principal_for_key(request.auth)
    elif getattr(request.user, "is_authenticated", False):
        principal = principal_for_user(request.user)
    request._corral_principal = principal
    return principal


# --- Actors as a viewer may see them ---------------------------------------------------------------------------
#: An API key's label in an actor or a sentence: ``api-key:crl_1a2b3c4d`` (or the bare prefix).
_KEY_IN_TEXT = re.compile(r"(?:api-key:)?\b(crl_[0-9a-f]{8})")


class ActorView:
    """Actor labels as one caller may read them. A sibling organisation of an affiliate group sees the group's
    totals and statuses, not each other's keys: another organisation's key prefix is shown as "an API key of
    <that organisation>" unless the caller belongs to that organisation or is a group admin of its group (or
    is staff). Only the display changes: the audit chain keeps what was recorded, so its hashes still verify.

    The key owners are looked up once per prefix, so one view serves a whole page or answer."""

    def __init__(self, principal: Principal | None) -> None:
        self.principal = principal
        self._owners: dict[str, tuple[int, int, str] | None] = {}
        self._loaded_groups = False

    def _look_up(self, prefixes: set[str]) -> None:
        missing = prefixes - set(self._owners)
        if not missing:
            return
        self._owners.update(dict.fromkeys(missing))
        wanted = Q(prefix__in=missing)
        if not self._loaded_groups and self.principal is not None:
            # The first look-up reads every key of the caller's groups too: a page naming many keys costs one query.
            wanted |= Q(organisation__group__in=self.principal.group_ids())
            self._loaded_groups = True
        for prefix, org, group, name in ApiKey.objects.filter(wanted).values_list(
                "prefix", "organisation_id", "organisation__group_id", "organisation__name"):
            self._owners[prefix] = (org, group, name)

    def _visible(self, prefix: str) -> bool:
        owner = self._owners.get(prefix)
        principal = self.principal
        if owner is None:
            return False  # a key that no longer exists cannot be shown to be the caller's
        org, group, _name = owner
        return principal is not None and (principal.is_staff or org in principal.scopes_by_org
                                          or principal.is_group_admin(group))

    def _shown(self, match: re.Match[str]) -> str:
        if self._visible(match.group(1)):
            return match.group(0)
        owner = self._owners.get(match.group(1))
        return f"an API key of {owner[2]}" if owner else "an API key"

    def hides(self, value: Any) -> bool:
        """Whether ``value`` names a key this caller may not see. An audit entry that does keeps its hashes
        from them too: with every other hashed field shown, its hash would let anyone try the 2^32 prefixes
        offline until one matches."""
        prefixes = set(_prefixes_in(value))
        self._look_up(prefixes)
        return any(not self._visible(prefix) for prefix in prefixes)

    def text(self, text: str) -> str:
        if "crl_" not in text:
            return text
        self._look_up(set(_KEY_IN_TEXT.findall(text)))
        return _KEY_IN_TEXT.sub(self._shown, text)

    def data(self, value: Any) -> Any:
        """Every string inside ``value`` (dicts and lists are changed in place, keeping their types)."""
        self._look_up(set(_prefixes_in(value)))
        return self._replace(value)

    def _replace(self, value: Any) -> Any:
        if isinstance(value, str):
            return _KEY_IN_TEXT.sub(self._shown, value) if "crl_" in value else value
        if isinstance(value, dict):
            for key, item in value.items():
                value[key] = self._replace(item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                value[index] = self._replace(item)
        return value


def _prefixes_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return _KEY_IN_TEXT.findall(value) if "crl_" in value else []
    if isinstance(value, dict):
        return [p for item in value.values() for p in _prefixes_in(item)]
    if isinstance(value, (list, tuple)):
        return [p for item in value for p in _prefixes_in(item)]
    return []


def actor_for_viewer(actor: str, principal: Principal | None) -> str:
    """One actor label (or a sentence naming actors) as ``principal`` may see it."""
    return ActorView(principal).text(actor)


def actors_for_viewer(value: Any, principal: Principal | None) -> Any:
    """Every actor label inside an API answer or a report, as ``principal`` may see it."""
    return ActorView(principal).data(value)


def key_actors_hidden_from(principal: Principal) -> list[str]:
    """The actor labels (``api-key:<prefix>``) of the keys in the caller's groups that ``ActorView`` hides from
    them: other organisations' keys, in groups they do not administer. A search by actor skips them."""
    if principal.is_staff:
        return []
    hidden = (ApiKey.objects.filter(organisation__group__in=principal.group_ids())
              .exclude(organisation__in=principal.organisation_ids())
              .exclude(organisation__group__in=principal.admin_group_ids))
    return [f"api-key:{prefix}" for prefix in hidden.values_list("prefix", flat=True)]
