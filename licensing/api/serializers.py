from __future__ import annotations

from typing import Any, cast

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from access.api.tenancy import TenantViewSet
from access.models import AffiliateGroup, GroupAdmin, Organisation
from config.fields import SlugRelatedField
from licensing.models import (
    BaseModel,
    Exemption,
    LicenceAcceptance,
    LicenceVersion,
    MetaGrant,
    Product,
    sha256_validator,
)
from licensing.selectors import products_writable
from licensing.services import EVIDENCE_NEEDED, SUPPLIER_NEEDED


def products_writable_through(view: Any) -> QuerySet[Product]:
    """The products a write through ``view`` may name: the caller's (``products_writable``); none through a
    view that is not a tenant's (the staff's read-only ones)."""
    if not isinstance(view, TenantViewSet):
        return Product.objects.none()
    return products_writable(principal=view.principal, organisation_ids=view.writable_organisation_ids())


class BaseModelSerializer(serializers.ModelSerializer):
    test_month = serializers.SerializerMethodField(
        help_text="By the model's own release date, where it has one: the month the 700M test looks at")

    class Meta:
        model = BaseModel
        fields = ["id", "repo_id", "multimodal", "release_date", "test_month", "date_note", "licence_note"]

    @extend_schema_field({"type": "string", "nullable": True})  # no month without a release date
    def get_test_month(self, obj: BaseModel) -> str | None:
        month = obj.test_month()
        return month.strftime("%Y-%m") if month else None


class LicenceVersionSerializer(serializers.ModelSerializer):
    test_month = serializers.SerializerMethodField(help_text="First day of the month the 700M test looks at")
    base_models = BaseModelSerializer(many=True, read_only=True)

    class Meta:
        model = LicenceVersion
        fields = [
            "id", "slug", "name", "licence_name", "release_date", "release_date_label", "test_month",
            "date_ambiguous", "date_note", "mau_threshold", "notice_line", "attribution_display",
            "derived_name_prefix", "derived_name_covers_outputs", "outputs_may_improve_other_models",
            "eu_multimodal_restriction", "licence_url", "licence_sha256", "licence_source", "aup_version", "aup_url",
            "aup_sha256", "base_models",
        ]

    def get_test_month(self, obj: LicenceVersion) -> str:
        return obj.test_month().strftime("%Y-%m")


class GroupSerializer(serializers.ModelSerializer):
    organisations: serializers.SlugRelatedField[Organisation] = serializers.SlugRelatedField(
        many=True, read_only=True, slug_field="name")
    managing_organisation = serializers.SerializerMethodField(
        help_text="Its admins are the group's admins (with the people they appointed)")
    you_are_group_admin = serializers.SerializerMethodField(
        help_text="Whether this credential may change the group's policy, declarations, webhooks and alerts")

    class Meta:
        model = AffiliateGroup
        fields = ["id", "name", "slug", "organisations", "managing_organisation", "you_are_group_admin",
                  "created_at"]

    @extend_schema_field(OpenApiTypes.INT)
    def get_managing_organisation(self, obj: AffiliateGroup) -> int | None:
        return obj.managing_organisation_id_resolved()

    def get_you_are_group_admin(self, obj: AffiliateGroup) -> bool:
        view = self.context.get("view")
        return bool(view is not None and obj.pk in view.principal.admin_group_ids)


class GroupAdminSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", max_length=150)

    class Meta:
        model = GroupAdmin
        fields = ["id", "username", "appointed_by", "appointed_at"]
        read_only_fields = ["id", "appointed_by", "appointed_at"]


class GroupManagementSerializer(serializers.Serializer):
    organisation = serializers.IntegerField(min_value=1, help_text="An organisation of this group")


class OrganisationSerializer(serializers.ModelSerializer):
    group: serializers.PrimaryKeyRelatedField[AffiliateGroup] = serializers.PrimaryKeyRelatedField(read_only=True)
    group_name = serializers.CharField(source="group.name", read_only=True)

    class Meta:
        model = Organisation
        fields = ["id", "name", "slug", "group", "group_name", "status", "eu_domiciled", "created_at"]
        read_only_fields = fields


@extend_schema_field(OpenApiTypes.INT)
class TenantOrganisationField(serializers.PrimaryKeyRelatedField):
    """An organisation the caller may write in; any other id is "does not exist", revealing nothing."""

    def get_queryset(self) -> Any:
        view = self.context.get("view")
        if view is None:
            return Organisation.objects.none()
        return Organisation.objects.filter(pk__in=view.writable_organisation_ids())


class TenantCreateMixin:
    """Organisation defaults to the caller's only writable one, is required otherwise, and never changes."""

    context: dict[str, Any]  # the serializer's it is mixed into

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)  # type: ignore[misc]
        instance = getattr(self, "instance", None)
        if instance is not None:
            if "organisation" in attrs and attrs["organisation"].pk != instance.organisation_id:
                raise serializers.ValidationError({"organisation": "An object cannot move to another organisation."})
            attrs.pop("organisation", None)
            return attrs
        if "organisation" not in attrs:
            writable = self.context["view"].writable_organisation_ids()
            if len(writable) != 1:
                raise serializers.ValidationError(
                    {"organisation": "Required: this credential can write in more than one organisation."}
                )
            attrs["organisation"] = Organisation.objects.get(pk=writable[0])
        return attrs


class ProductSerializer(TenantCreateMixin, serializers.ModelSerializer):
    organisation = TenantOrganisationField(required=False)
    licence_version = SlugRelatedField(
        slug_field="slug", queryset=LicenceVersion.objects.all(), required=False, allow_null=True,
        help_text="The Llama licence it is built under; null (or left out) for a product or service not built on "
                  "Llama, which is metered and counted all the same")
    base_model = SlugRelatedField(
        slug_field="repo_id", queryset=BaseModel.objects.all(), required=False, allow_null=True
    )
    built_on_llama = serializers.BooleanField(read_only=True)

    class Meta:
        model = Product
        fields = [
            "id", "organisation", "name", "description", "licence_version", "built_on_llama", "base_model",
            "launch_date", "status", "created_at", "updated_at",
        ]
        read_only_fields = ["id", "built_on_llama", "created_at", "updated_at"]
        # Uniqueness of (organisation, name) is checked by the service with a message naming the field.
        validators: list[Any] = []


class AcceptanceSerializer(TenantCreateMixin, serializers.ModelSerializer):
    organisation = TenantOrganisationField(required=False)
    licence_version = SlugRelatedField(slug_field="slug", queryset=LicenceVersion.objects.all())
    product = serializers.PrimaryKeyRelatedField(queryset=Product.objects.none(), required=False, allow_null=True)
    licence_sha256 = serializers.CharField(
        validators=[sha256_validator], help_text="SHA-256 of the licence text accepted (see /licences/)"
    )
    # Required like licence_sha256: the client says which AUP text it showed. Blank only for a version whose
    # catalogue row pins no AUP text (the service checks it against the catalogue either way).
    aup_sha256 = serializers.CharField(
        validators=[sha256_validator], allow_blank=True,
        help_text="SHA-256 of the Acceptable Use Policy text accepted (the version's aup_sha256 in /licences/)",
    )

    class Meta:
        model = LicenceAcceptance
        fields = [
            "id", "organisation", "licence_version", "product", "licence_sha256", "aup_version", "aup_sha256",
            "note", "accepted_by", "accepted_at",
        ]
        read_only_fields = ["id", "accepted_by", "accepted_at"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        view = self.context.get("view")
        if view is not None and not getattr(view, "swagger_fake_view", False):
            product_field = cast("serializers.PrimaryKeyRelatedField[Product]", self.fields["product"])
            product_field.queryset = products_writable_through(view)


class GrantSerializer(serializers.ModelSerializer):
    group = serializers.PrimaryKeyRelatedField(queryset=AffiliateGroup.objects.all())
    licence_versions = SlugRelatedField(
        slug_field="slug", many=True, queryset=LicenceVersion.objects.all()
    )
    supersedes = serializers.PrimaryKeyRelatedField(queryset=MetaGrant.objects.all(), required=False, allow_null=True)

    class Meta:
        model = MetaGrant
        fields = [
            "id", "group", "licence_versions", "reference", "scope", "granted_on", "valid_from", "valid_until",
            "supersedes", "revoked", "recorded_by", "recorded_at",
        ]
        read_only_fields = ["id", "recorded_by", "recorded_at"]


class NameCheckSerializer(serializers.Serializer):
    name = serializers.CharField()
    ok = serializers.BooleanField()
    rule = serializers.CharField()
    message = serializers.CharField()
    reading = serializers.CharField(
        allow_blank=True, help_text="The reading Corral used where the licence text does not decide; else empty")


class ObligationsSerializer(serializers.Serializer):
    product = serializers.IntegerField()
    built_on_llama = serializers.BooleanField(help_text="Always true here; see NoObligationsSerializer")
    version = serializers.CharField()
    notice_filename = serializers.CharField()
    notice_text = serializers.CharField()
    attribution_display = serializers.CharField(allow_null=True)
    derived_name_prefix = serializers.CharField(allow_null=True)
    derived_name_covers_outputs = serializers.BooleanField()
    derived_name_rule = serializers.CharField(allow_null=True)
    derived_name_reading = serializers.CharField(allow_blank=True)
    outputs_may_improve_other_models = serializers.BooleanField()
    eu_multimodal_restriction = serializers.BooleanField()
    redistribute_licence_copy = serializers.BooleanField()
    aup_version = serializers.CharField()
    aup_url = serializers.URLField()
    aup_accepted = serializers.BooleanField()
    licence_accepted = serializers.BooleanField()
    date_ambiguous = serializers.BooleanField()
    licence_required = serializers.CharField(allow_blank=True)
    aup_required = serializers.CharField(allow_blank=True)
    derived_model_name_check = NameCheckSerializer(allow_null=True)


class NoObligationsSerializer(serializers.Serializer):
    """The answer for a product or service not built on Llama: it has no licence, so no obligations."""

    product = serializers.IntegerField()
    built_on_llama = serializers.BooleanField(help_text="Always false here")
    detail = serializers.CharField()


class ExemptionSerializer(serializers.ModelSerializer):
    """Clause 1.b.ii: the organisation receives Llama only as part of another licensee's integrated end user
    product, so Section 2 (the 700M clause) does not apply to it."""

    in_force = serializers.BooleanField(read_only=True)
    supplier = serializers.CharField(
        max_length=200, help_text="The licensee the integrated end user product comes from",
        error_messages={"required": SUPPLIER_NEEDED, "blank": SUPPLIER_NEEDED})
    evidence = serializers.CharField(
        help_text="What shows it (required): the agreement, the product, the supplier's confirmation",
        error_messages={"required": EVIDENCE_NEEDED, "blank": EVIDENCE_NEEDED})

    class Meta:
        model = Exemption
        fields = ["id", "organisation", "supplier", "evidence", "in_force", "recorded_by", "recorded_at",
                  "withdrawn_at", "withdrawn_by"]
        read_only_fields = ["id", "organisation", "in_force", "recorded_by", "recorded_at", "withdrawn_at",
                            "withdrawn_by"]


class ExemptionStateSerializer(serializers.Serializer):
    exempt = serializers.BooleanField(help_text="Whether an exemption is in force")
    exemption = ExemptionSerializer(allow_null=True, help_text="The exemption in force, or null")
    history = ExemptionSerializer(many=True, help_text="Every exemption recorded, newest first")


class DomicileSerializer(serializers.Serializer):
    eu_domiciled = serializers.BooleanField(
        help_text="Principal place of business in the European Union. Moving into the EU drains the deployments "
                  "of multimodal models whose Acceptable Use Policy withholds them (Llama 3.2, 3.3, 4)")


class DomicileChangeSerializer(serializers.Serializer):
    organisation = OrganisationSerializer()
    changed = serializers.BooleanField()
    drained_deployments = serializers.ListField(child=serializers.DictField(),
                                                help_text="id and served_model_name of each deployment drained")
