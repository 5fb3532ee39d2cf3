"""Tenant isolation for the REST API, in one place.

Every tenant viewset derives from ``TenantViewSet``: its queryset is cut down to the caller's organisations
before anything else happens, so another tenant's object is a 404 for every method (its existence is not
revealed). Subclasses narrow further through ``scope_queryset`` and never override ``get_queryset``.

A key bound to one product reaches that product only: a viewset whose rows belong to a product names the path
to it (``product_field``), and the queryset and the objects it may change are cut down to the bound product here (the products a
write may name: ``licensing.selectors.products_writable``). Writes that change the whole organisation
(``organisation_level_writes``) or the whole group are refused to bound keys (access/permissions.py).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import viewsets
from rest_framework.exceptions import NotAuthenticated

from access.models import AffiliateGroup, Organisation, Scope
from access.principals import Principal, actors_for_viewer, principal_of

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class TenantViewSet(viewsets.GenericViewSet):
    #: Lookup from the model to its organisation's id, e.g. "organisation" or "product__organisation".
    tenant_field: str = "organisation"
    #: Lookup from the model to its product's id ("product", "pk" for products, "deployment__product"), for
    #: rows that belong to a product: a product-bound key sees and changes only its own product's rows.
    product_field: str | None = None
    #: Writes here change the organisation as a whole (keys, webhooks): refused to product-bound keys.
    organisation_level_writes: bool = False
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
        principal = self.principal
        queryset = queryset.filter(**{f"{self.tenant_field}__in": principal.organisation_ids()})
        if principal.bound_product_id and self.product_field:
            queryset = queryset.filter(**{self.product_field: principal.bound_product_id})
        return self.scope_queryset(queryset)

    def finalize_response(self, request: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        # Group-level answers (audit entries, declarations, statuses, alerts, webhooks) name their actors: a
        # sibling organisation sees another organisation's key as "an API key of <it>", never its prefix.
        if getattr(response, "data", None) is not None:
            response.data = actors_for_viewer(response.data, principal_of(request))
        return super().finalize_response(request, response, *args, **kwargs)

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
    an admin in one group and a viewer in another cannot write in the second. Writes that change what the
    whole group is judged by (``needs_group_admin``, by default every write) need the group-level role: an
    admin of the group's managing organisation, or a person appointed group admin. Keys bound to one product
    act on that product only, so they may read group objects but never change them.
    """

    tenant_field = "organisations"

    def scope_queryset(self, queryset: QuerySet) -> QuerySet:
        return queryset.distinct()  # a group reached through several of the caller's organisations

    def needs_group_admin(self, request: Any) -> bool:
        """Hook: whether this request changes group-wide state (every write, unless a view says otherwise)."""
        return request.method not in SAFE_METHODS

    def group_id_of(self, obj: Any) -> int:
        return obj.pk if isinstance(obj, AffiliateGroup) else obj.group_id

    def organisation_ids_of(self, obj: Any) -> list[int]:
        return list(Organisation.objects.filter(group_id=self.group_id_of(obj)).values_list("pk", flat=True))

    def administered_groups(self) -> QuerySet[AffiliateGroup]:
        """The groups whose group-wide state the caller may change (a write naming another is "does not exist")."""
        return AffiliateGroup.objects.filter(pk__in=self.principal.admin_group_ids)  # type: ignore[attr-defined]
