"""The scope check every tenant API view runs: reads need ``read``, writes the view's write scope."""

from __future__ import annotations

from typing import Any

from rest_framework import permissions

from governance.principals import principal_of


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
        return True

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        principal = principal_of(request)
        if principal is None:
            return False
        scope = view.required_scope(request) if hasattr(view, "required_scope") else "read"
        if scope is None:
            return True
        if hasattr(view, "organisation_ids_of"):  # objects of a whole affiliate group
            if request.method not in permissions.SAFE_METHODS and principal.bound_product_id:
                self.message = "This key is bound to one product and cannot change group-wide objects."
                return False
            if not any(principal.has_scope(scope, org) for org in view.organisation_ids_of(obj)):
                self.message = f"This credential lacks the '{scope}' scope in this object's affiliate group."
                return False
            return True
        organisation_id = view.organisation_id_of(obj) if hasattr(view, "organisation_id_of") else None
        if organisation_id is None:
            return principal.has_scope(scope)
        if not principal.has_scope(scope, organisation_id):
            self.message = f"This credential lacks the '{scope}' scope in this object's organisation."
            return False
        return True
