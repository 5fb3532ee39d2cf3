"""The checks every tenant API view runs: the scope (reads need ``read``, writes the view's write scope), a
product-bound key's reach, and the group-level role for writes that change what a whole group is judged by."""

from __future__ import annotations

from typing import Any

from rest_framework import permissions

from access.principals import Principal, principal_of

BOUND_KEY_ORGANISATION = "This key is bound to one product and cannot change organisation-wide objects."
BOUND_KEY_GROUP = "This key is bound to one product and cannot change group-wide objects."
GROUP_ADMIN_NEEDED = ("Only a group admin can change this: an admin of the group's managing organisation, or "
                      "someone they appointed group admin. Other organisations' admins may propose a "
                      "declaration (POST /api/v1/declaration-proposals/).")


def _needs_group_admin(request: Any, view: Any) -> bool:
    return hasattr(view, "needs_group_admin") and view.needs_group_admin(request)


def _names_an_object(view: Any) -> bool:
    return (getattr(view, "lookup_url_kwarg", None) or getattr(view, "lookup_field", "pk")) in getattr(view, "kwargs", {})


class HasTenantScope(permissions.BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        principal = principal_of(request)
        if principal is None:
            return False
        scope = view.required_scope(request) if hasattr(view, "required_scope") else "read"
        if scope is None:
            return True
        if not principal.has_scope(scope):
            self.message = f"This credential lacks the '{scope}' scope needed for this request."
            return False
        if request.method not in permissions.SAFE_METHODS and principal.bound_product_id:
            if getattr(view, "organisation_level_writes", False):
                self.message = BOUND_KEY_ORGANISATION
                return False
        # A group-wide write to an object is checked once the object is found (another tenant's is a 404);
        # one that creates an object (a webhook) is refused here to a caller who administers no group.
        if _needs_group_admin(request, view) and not _names_an_object(view):
            if principal.bound_product_id:
                self.message = BOUND_KEY_GROUP
                return False
            if not principal.admin_group_ids:
                self.message = GROUP_ADMIN_NEEDED
                return False
        return True

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        principal = principal_of(request)
        if principal is None:
            return False
        scope = view.required_scope(request) if hasattr(view, "required_scope") else "read"
        if scope is None:
            return True
        if hasattr(view, "organisation_ids_of"):  # objects of a whole affiliate group
            return self._group_object_permission(request, view, obj, principal, scope)
        organisation_id = view.organisation_id_of(obj) if hasattr(view, "organisation_id_of") else None
        if organisation_id is None:
            return principal.has_scope(scope)
        if not principal.has_scope(scope, organisation_id):
            self.message = f"This credential lacks the '{scope}' scope in this object's organisation."
            return False
        return True

    def _group_object_permission(self, request: Any, view: Any, obj: Any, principal: Principal, scope: str) -> bool:
        if request.method not in permissions.SAFE_METHODS and principal.bound_product_id:
            self.message = BOUND_KEY_GROUP
            return False
        if not any(principal.has_scope(scope, org) for org in view.organisation_ids_of(obj)):
            self.message = f"This credential lacks the '{scope}' scope in this object's affiliate group."
            return False
        if _needs_group_admin(request, view) and not principal.is_group_admin(view.group_id_of(obj)):
            self.message = GROUP_ADMIN_NEEDED
            return False
        return True
