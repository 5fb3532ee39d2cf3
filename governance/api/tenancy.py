"""Tenant isolation for the REST API, in one place.

Every tenant viewset derives from ``TenantViewSet``: its queryset is cut down to the caller's organisations
before anything else happens, so another tenant's object is a 404 for every method (its existence is not
revealed). Subclasses narrow further through ``scope_queryset`` and never override ``get_queryset``.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import viewsets
from rest_framework.exceptions import NotAuthenticated

from governance.models import Scope
from licensing.models import AffiliateGroup, Organisation
from governance.principals import Principal, principal_of

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class TenantViewSet(viewsets.GenericViewSet):
    #: Lookup from the model to its organisation's id, e.g. "organisation" or "product__organisation".
    tenant_field: str = "organisation"
    read_scope: str = Scope.READ
    write_scope: str = Scope.WRITE

    @property
    def principal(self) -> Principal:
        principal = principal_of(self.request)
        if principal is None:
            raise NotAuthenticated()
        return principal

    def required_scope(self, request: Any) -> str | None:
        return self.read_scope if request.method in SAFE_METHODS else self.write_scope

    def get_queryset(self) -> QuerySet:  # final: subclasses use scope_queryset
        queryset = super().get_queryset()
        if getattr(self, "swagger_fake_view", False):  # schema generation has no caller
            return queryset.none()
        queryset = queryset.filter(**{f"{self.tenant_field}__in": self.principal.organisation_ids()})
        return self.scope_queryset(queryset)

    def scope_queryset(self, queryset: QuerySet) -> QuerySet:
        """Hook: narrow the tenant's rows further (e.g. to a key's bound product)."""
        return queryset

    def organisation_id_of(self, obj: Any) -> int | None:
        *path, last = self.tenant_field.split("__")
        for part in path:
            obj = getattr(obj, part)
        if last == "pk":
            return obj.pk
        return getattr(obj, f"{last}_id")

    def writable_organisation_ids(self) -> list[int]:
        return self.principal.organisation_ids(self.write_scope)


class GroupTenancy:
    """For objects reached through an affiliate group: visible to callers in any organisation of the group.

    A scope is checked in the organisations of the object's own group (``organisation_ids_of``): a user who is
    an admin in one group and a viewer in another cannot write in the second. Keys bound to one product act
    on that product only, so they may read group objects but never change them.
    """

    tenant_field = "organisations"

    def scope_queryset(self, queryset: QuerySet) -> QuerySet:
        return queryset.distinct()  # a group reached through several of the caller's organisations

    def organisation_ids_of(self, obj: Any) -> list[int]:
        group_id = obj.pk if isinstance(obj, AffiliateGroup) else obj.group_id
        return list(Organisation.objects.filter(group_id=group_id).values_list("pk", flat=True))
