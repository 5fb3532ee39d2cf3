"""Who sees what in the portal: the REST API's tenancy rules, applied to a signed-in person.

The answer is the API's ``Principal`` (access/principals.py): a member's scopes per organisation follow
from their role (viewer: read; member: read, write, ingest; admin and owner: everything). Two visibilities
follow from it, as in the API:

- group-wide pages (the group's figures, statuses, alerts, policy, webhooks, audit log, evidence) are visible
  to a member of any organisation of the group (``GroupTenancy``);
- organisation pages (products, acceptances, keys, deployments) to members of that organisation
  (``TenantViewSet``).

Corral staff (``is_staff``) are the operators: they see every group and act with every scope, as they can in
the Django admin. Anything outside a person's reach is a 404, never a 403, so its existence is not revealed;
a page they may see but an action their role does not allow is a 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from access.models import AffiliateGroup, Organisation, Scope
from access.principals import ROLE_SCOPES, Principal, principal_for_user
from licensing import selectors as licensing_selectors

ALL_SCOPES = frozenset(Scope.values)


def needs(scope: str) -> str:
    """What a refusal says is needed: the scope and the least role that holds it (roles in ROLE_SCOPES' order)."""
    role = next((role for role, scopes in ROLE_SCOPES.items() if scope in scopes), None)
    return f"the '{scope}' scope, which the {role} role and those above it hold" if role else f"the '{scope}' scope"


@dataclass(frozen=True)
class Access:
    principal: Principal
    is_staff: bool

    @property
    def label(self) -> str:
        """Who acts, as the audit log and the records name them (``user:<username>``)."""
        return self.principal.label

    @property
    def user(self) -> Any:
        return self.principal.user

    # --- organisations ----------------------------------------------------------------------------------
    def scopes_in(self, organisation_id: int) -> frozenset[str]:
        if self.is_staff:
            return ALL_SCOPES
        return self.principal.scopes_by_org.get(organisation_id, frozenset())

    def can(self, scope: str, organisation_id: int) -> bool:
        return scope in self.scopes_in(organisation_id)

    def organisations(self, scope: str | None = None) -> QuerySet[Organisation]:
        """The organisations whose pages this person sees (with ``scope``: where they hold it)."""
        if self.is_staff:
            return licensing_selectors.organisation_list_unscoped()
        return licensing_selectors.organisation_list(organisation_ids=self.principal.organisation_ids(scope))

    def organisation_ids(self, scope: str | None = None) -> list[int]:
        return list(self.organisations(scope).values_list("pk", flat=True))

    def require(self, scope: str, organisation_id: int) -> None:
        """403 unless this person holds ``scope`` in the organisation (call after the object was found)."""
        if not self.can(scope, organisation_id):
            raise PermissionDenied(f"Your role does not allow this: it needs {needs(scope)}.")

    # --- affiliate groups -------------------------------------------------------------------------------
    def groups(self) -> QuerySet[AffiliateGroup]:
        if self.is_staff:
            return licensing_selectors.affiliate_group_list_unscoped()
        return licensing_selectors.affiliate_group_list(organisation_ids=self.principal.organisation_ids())

    def group_or_404(self, pk: int) -> AffiliateGroup:
        group = licensing_selectors.affiliate_group_get(groups=self.groups(), pk=pk)
        if group is None:
            raise Http404("No such affiliate group.")
        return group

    def can_in_group(self, scope: str, group: AffiliateGroup | int) -> bool:
        """Whether this person holds ``scope`` in some organisation of the group (the API's group rule)."""
        if self.is_staff:
            return True
        group_id = group if isinstance(group, int) else group.pk
        org_ids = self.principal.organisation_ids(scope)
        return any(self.principal._group_by_org.get(org) == group_id for org in org_ids)

    def require_in_group(self, scope: str, group: AffiliateGroup | int) -> None:
        if not self.can_in_group(scope, group):
            raise PermissionDenied(f"Your role does not allow this: it needs {needs(scope)} in an organisation of "
                                   f"this group.")


    def is_group_admin(self, group: AffiliateGroup | int) -> bool:
        """Whether this person changes what the whole group is judged by: its policy, declarations, webhooks
        and alert acknowledgements (an admin of the managing organisation, or an appointed group admin)."""
        group_id = group if isinstance(group, int) else group.pk
        return self.is_staff or self.principal.is_group_admin(group_id)

    def require_group_admin(self, group: AffiliateGroup | int) -> None:
        if not self.is_group_admin(group):
            raise PermissionDenied("Only a group admin can change this: an admin of the group's managing "
                                   "organisation, or someone they appointed group admin.")


def access_of(request: Any) -> Access:
    """The signed-in person's access, computed once per request."""
    cached = getattr(request, "_portal_access", None)
    if cached is None:
        user = request.user
        cached = Access(principal=principal_for_user(user), is_staff=bool(user.is_staff and user.is_active))
        request._portal_access = cached
    return cached
