from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from governance import services
from governance.api.filters import ApiKeyFilter
from governance.api.serializers import ApiKeyCreatedSerializer, ApiKeyCreateSerializer, ApiKeySerializer
from governance.api.tenancy import TenantViewSet
from governance.models import ApiKey, Scope


class ApiKeyViewSet(TenantViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """API keys of the caller's organisation. Creating and revoking needs the ``admin`` scope."""

    queryset = ApiKey.objects.all()
    serializer_class = ApiKeySerializer
    filterset_class = ApiKeyFilter
    write_scope = Scope.ADMIN
    product_field = "product"  # a product-bound key sees the keys of its product only
    organisation_level_writes = True  # and creates or revokes none
    ordering_fields = ["created_at", "last_used_at"]

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
            api_key, full_key = services.api_key_create(created_by=principal.label, **data)
        except ValueError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        api_key.key = full_key  # type: ignore[attr-defined]
        return Response(ApiKeyCreatedSerializer(api_key).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        """Revoke the key at once; revoking twice is harmless."""
        api_key = services.api_key_revoke(api_key=self.get_object(), revoked_by=self.principal.label)
        return Response(ApiKeySerializer(api_key).data)

    @extend_schema(request=None, responses={204: None})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        """Same as revoke: the record stays, for the audit trail."""
        services.api_key_revoke(api_key=self.get_object(), revoked_by=self.principal.label)
        return Response(status=status.HTTP_204_NO_CONTENT)
