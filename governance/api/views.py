from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from access import keys
from access.api.tenancy import TenantViewSet
from access.models import ApiKey, Scope
from governance.api.filters import ApiKeyFilter
from governance.api.serializers import ApiKeyCreatedSerializer, ApiKeyCreateSerializer, ApiKeySerializer


class ApiKeyViewSet(TenantViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """API keys of the caller's organisation. Creating and revoking needs the ``admin`` scope."""

    queryset = ApiKey.objects.all()
    serializer_class = ApiKeySerializer
    filterset_class = ApiKeyFilter
    write_scope = Scope.ADMIN
    product_field = "product"  # a product-bound key sees the keys of its product only
    organisation_level_writes = True  # and creates or revokes none
    ordering_fields = ["created_at", "last_used_at"]

    def scope_queryset(self, queryset: QuerySet) -> QuerySet:
        return queryset.filter(deleted_at__isnull=True)

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeyCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create a key. The response carries the full key once; only its hash is kept."""
        form = ApiKeyCreateSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = dict(form.validated_data)
        principal = self.principal
        # A credential cannot mint a stronger one: at most its own scopes, and its own product binding.
        granted = principal.scopes_by_org.get(data["organisation"].pk, frozenset())
        beyond = sorted(set(data["scopes"]) - set(granted))
        if beyond:
            raise PermissionDenied(f"This credential cannot grant scopes it does not hold: {', '.join(beyond)}.")
        try:
            api_key, full_key = keys.api_key_create(created_by=principal.label, **data)
        except ValueError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        api_key.key = full_key  # type: ignore[attr-defined]
        return Response(ApiKeyCreatedSerializer(api_key).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        """Revoke the key at once; revoking twice is harmless. A key cannot revoke itself (409)."""
        api_key = keys.api_key_revoke(api_key=self.key_to_revoke(), revoked_by=self.principal.label)
        return Response(ApiKeySerializer(api_key).data)

    @extend_schema(request=None, responses={204: None})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        """Revoke the key and take it out of the API: its URL then answers 404 and it is no longer listed. The
        record stays, for the audit trail (the portal's key list shows it revoked). A key cannot delete
        itself (409)."""
        keys.api_key_delete(api_key=self.key_to_revoke(), deleted_by=self.principal.label)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def key_to_revoke(self) -> ApiKey:
        """The key of the URL, unless it is the caller's own: a key that revoked itself would lock its holder
        out with nothing to undo it. Another admin key, or a member in the portal, revokes it."""
        api_key = self.get_object()
        if self.principal.api_key is not None and self.principal.api_key.pk == api_key.pk:
            raise KeyRevokesItself()
        return api_key


class KeyRevokesItself(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "key_revokes_itself"
    default_detail = ("A key cannot revoke itself: revoke it with another key that has the admin scope, or in "
                      "the portal's key list.")
