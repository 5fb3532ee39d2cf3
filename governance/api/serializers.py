from __future__ import annotations

from typing import Any, cast

from django.utils import timezone
from rest_framework import serializers

from access.models import ApiKey, Organisation, Scope
from licensing.api.serializers import TenantCreateMixin, TenantOrganisationField, products_writable_through
from licensing.models import Product


class ApiKeySerializer(serializers.ModelSerializer):
    organisation: serializers.PrimaryKeyRelatedField[Organisation] = serializers.PrimaryKeyRelatedField(read_only=True)
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "id", "organisation", "name", "prefix", "scopes", "product", "expires_at", "revoked_at", "revoked_by",
            "last_used_at", "created_by", "created_at", "is_active", "requests_per_minute", "tokens_per_minute",
            "max_concurrent", "default_user",
        ]
        read_only_fields = fields


class ApiKeyCreateSerializer(TenantCreateMixin, serializers.Serializer):
    organisation = TenantOrganisationField(required=False)
    name = serializers.CharField(max_length=200)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=Scope.choices), allow_empty=False, max_length=len(Scope.values)
    )
    product = serializers.PrimaryKeyRelatedField(queryset=Product.objects.none(), required=False, allow_null=True)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    # Gateway limits of this key (empty: the organisation's per-key defaults); the organisation's own limits
    # still cap all its keys together.
    requests_per_minute = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=10**9)
    tokens_per_minute = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=2 * 10**9)
    max_concurrent = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=100_000)
    default_user = serializers.CharField(required=False, allow_blank=True, max_length=200, help_text=(
        "Gateway: the user metered for MAU when a request names none (no `user` field, no X-Corral-User header)"))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        view = self.context.get("view")
        if view is not None and not getattr(view, "swagger_fake_view", False):
            product_field = cast("serializers.PrimaryKeyRelatedField[Product]", self.fields["product"])
            product_field.queryset = products_writable_through(view)

    def validate_expires_at(self, value: Any) -> Any:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Must be in the future.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        product = attrs.get("product")
        if product is not None and product.organisation_id != attrs["organisation"].pk:
            raise serializers.ValidationError({"product": "The product belongs to another organisation."})
        return attrs


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The full key. Shown this once; store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields
