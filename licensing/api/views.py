from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from access.api.tenancy import GroupTenancy, TenantViewSet
from access.models import AffiliateGroup, GroupAdmin, Organisation, Scope
from access.principals import principal_of
from licensing import selectors, services
from licensing.api import filters
from licensing.api.serializers import (
    AcceptanceSerializer,
    DomicileChangeSerializer,
    DomicileSerializer,
    ExemptionSerializer,
    ExemptionStateSerializer,
    GrantSerializer,
    GroupAdminSerializer,
    GroupManagementSerializer,
    GroupSerializer,
    LicenceVersionSerializer,
    NoObligationsSerializer,
    ObligationsSerializer,
    OrganisationSerializer,
    ProductSerializer,
)
from licensing.models import LicenceAcceptance, LicenceVersion, MetaGrant, Product
from licensing.obligations import NOTICE_FILENAME, check_derived_model_name, notice_file_text


class LicenceVersionViewSet(viewsets.ReadOnlyModelViewSet):
    """The licence catalogue: every Llama version with the facts Corral enforces. Same for every tenant."""

    queryset = LicenceVersion.objects.prefetch_related("base_models")
    serializer_class = LicenceVersionSerializer
    lookup_field = "slug"
    lookup_value_regex = r"[^/]+"  # slugs such as llama-3.1 contain dots
    filterset_class = filters.LicenceVersionFilter
    ordering_fields = ["release_date", "name"]


class GroupViewSet(GroupTenancy, TenantViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """The caller's affiliate group(s): the unit the 700M limit applies to, and who administers it.

    Group admins (the admins of the managing organisation, and the people they appoint) change what the whole
    group is judged by; they appoint and remove group admins and hand the management to another organisation.
    """

    queryset = AffiliateGroup.objects.prefetch_related("organisations")
    serializer_class = GroupSerializer
    filterset_class = filters.GroupFilter
    write_scope = Scope.ADMIN

    @extend_schema(methods=["GET"], responses=GroupAdminSerializer(many=True))
    @extend_schema(methods=["POST"], request=GroupAdminSerializer, responses={201: GroupAdminSerializer})
    @action(detail=True, methods=["get", "post"])
    def admins(self, request: Request, pk: str | None = None) -> Response:
        """The people appointed group admins (besides the managing organisation's admins); appoint one."""
        group = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(GroupAdmin.objects.filter(group=group).select_related("user"))
            return self.get_paginated_response(GroupAdminSerializer(page, many=True).data)
        form = GroupAdminSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        role = services.group_admin_appoint(group=group, username=form.validated_data["user"]["username"],
                                            actor=self.principal.label)
        return Response(GroupAdminSerializer(role).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["delete"], url_path=r"admins/(?P<admin_id>[0-9]{1,18})")
    def admin_remove(self, request: Request, pk: str | None = None, *, admin_id: str) -> Response:
        """Remove an appointed group admin."""
        group = self.get_object()
        role = GroupAdmin.objects.filter(group=group, pk=admin_id).select_related("user", "group").first()
        if role is None:
            raise NotFound("No such group admin in this group.")
        services.group_admin_remove(role=role, actor=self.principal.label)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=GroupManagementSerializer, responses=GroupSerializer)
    @action(detail=True, methods=["post"])
    def management(self, request: Request, pk: str | None = None) -> Response:
        """Hand the group's management to another of its organisations (its admins become the group's)."""
        group = self.get_object()
        form = GroupManagementSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        organisation = Organisation.objects.filter(group=group, pk=form.validated_data["organisation"]).first()
        if organisation is None:
            raise ValidationError({"organisation": ["Must be an organisation of this affiliate group."]})
        group = services.group_management_transfer(group=group, organisation=organisation, actor=self.principal.label)
        return Response(GroupSerializer(group, context=self.get_serializer_context()).data)


class OrganisationViewSet(TenantViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """The caller's own organisation(s). Its facts the licence depends on (the EU domicile, a clause 1.b.ii
    exemption) are changed by its admins (``admin`` scope), never by a key bound to one product."""

    queryset = Organisation.objects.select_related("group")
    serializer_class = OrganisationSerializer
    tenant_field = "pk"
    filterset_class = filters.OrganisationFilter
    write_scope = Scope.ADMIN
    organisation_level_writes = True

    @extend_schema(request=DomicileSerializer, responses=DomicileChangeSerializer)
    @action(detail=True, methods=["post"])
    def domicile(self, request: Request, pk: str | None = None) -> Response:
        """Record whether the organisation's principal place of business is in the EU. Moving into the EU
        drains its deployments of multimodal models the Llama 3.2 / 3.3 / 4 AUPs withhold, with an alert."""
        organisation = self.get_object()
        form = DomicileSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        change = services.organisation_domicile_set(
            organisation=organisation, eu_domiciled=form.validated_data["eu_domiciled"], actor=self.principal.label)
        return Response(DomicileChangeSerializer({
            "organisation": change.organisation, "changed": change.changed,
            "drained_deployments": [{"id": d.pk, "served_model_name": d.served_model_name} for d in change.drained],
        }).data)

    @extend_schema(methods=["GET"], responses=ExemptionStateSerializer)
    @extend_schema(methods=["POST"], request=ExemptionSerializer, responses={201: ExemptionSerializer})
    @action(detail=True, methods=["get", "post"])
    def exemption(self, request: Request, pk: str | None = None) -> Response:
        """Clause 1.b.ii: the organisation receives Llama only "as part of an integrated end user product" from
        another licensee, so Section 2 (the 700M clause) does not apply to it. GET: the exemption in force and
        every one recorded; POST: record one, with its evidence."""
        organisation = self.get_object()
        if request.method == "GET":
            current = selectors.organisation_exemption(organisation=organisation)
            return Response(ExemptionStateSerializer({
                "exempt": current is not None, "exemption": current,
                "history": selectors.exemption_history(organisation=organisation),
            }).data)
        form = ExemptionSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        exemption = services.exemption_record(organisation=organisation, recorded_by=self.principal.label,
                                              **form.validated_data)
        return Response(ExemptionSerializer(exemption).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ExemptionSerializer)
    @action(detail=True, methods=["post"], url_path="exemption/withdraw")
    def exemption_withdraw(self, request: Request, pk: str | None = None) -> Response:
        """Withdraw the exemption in force: the record stays, and Section 2 applies to the organisation again."""
        exemption = services.exemption_withdraw(organisation=self.get_object(), withdrawn_by=self.principal.label)
        return Response(ExemptionSerializer(exemption).data)


class ProductViewSet(TenantViewSet, viewsets.ModelViewSet):
    queryset = Product.objects.select_related("organisation", "licence_version", "base_model")
    serializer_class = ProductSerializer
    filterset_class = filters.ProductFilter
    ordering_fields = ["name", "launch_date", "created_at"]
    product_field = "pk"

    def perform_create(self, serializer: BaseSerializer[Product]) -> None:
        if self.principal.bound_product_id:
            raise PermissionDenied("This key is bound to one product and cannot create products.")
        serializer.instance = services.product_create(actor=self.principal.label, **serializer.validated_data)

    def perform_update(self, serializer: BaseSerializer[Product]) -> None:
        assert serializer.instance is not None  # an update's serializer holds the product
        serializer.instance = services.product_update(
            product=serializer.instance, actor=self.principal.label, **serializer.validated_data
        )

    def perform_destroy(self, instance: Product) -> None:
        services.product_delete(product=instance, actor=self.principal.label)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "derived_model_name", OpenApiTypes.STR, description="Also check this derived model name"
            )
        ],
        responses=PolymorphicProxySerializer(
            component_name="ProductObligations", serializers=[ObligationsSerializer, NoObligationsSerializer],
            resource_type_field_name=None),
    )
    @action(detail=True, methods=["get"])
    def obligations(self, request: Request, pk: str | None = None) -> Response:
        """What the product's licence version obliges it to do, and whether its licence and AUP are accepted.

        A product or service not built on Llama has none: ``built_on_llama`` is false and ``detail`` says so."""
        product = self.get_object()
        obligations = selectors.product_obligations_get(product=product)
        if obligations is None:
            return Response(NoObligationsSerializer(
                {"product": product.pk, "built_on_llama": False, "detail": selectors.NOT_BUILT_ON_LLAMA}).data)
        name = request.query_params.get("derived_model_name")
        name_check = check_derived_model_name(product.licence_version.terms(), name) if name is not None else None
        payload = {"product": product.pk, "built_on_llama": True, **asdict(obligations),
                   "derived_model_name_check": name_check and asdict(name_check)}
        return Response(ObligationsSerializer(payload).data)

    @extend_schema(responses={(200, "text/plain"): OpenApiTypes.STR})
    @action(detail=True, methods=["get"])
    def notice(self, request: Request, pk: str | None = None) -> HttpResponse:
        """The "Notice" text file to ship with the product (licence section 1.b.iii). A product not built on Llama
        has none: 404 saying so."""
        product = self.get_object()
        if product.licence_version is None:
            raise NotFound(f"{product.name} is not built on Llama: it has no Notice file to ship (section 1.b.iii "
                           f"applies to the Llama Materials).")
        response = HttpResponse(notice_file_text(product.licence_version.terms()), content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{NOTICE_FILENAME}"'
        return response


class AcceptanceViewSet(TenantViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin):
    """Licence and AUP acceptances: append-only, so there is no update or delete."""

    queryset = LicenceAcceptance.objects.select_related("organisation", "licence_version", "product")
    serializer_class = AcceptanceSerializer
    filterset_class = filters.AcceptanceFilter
    ordering_fields = ["accepted_at"]
    product_field = "product"

    def perform_create(self, serializer: BaseSerializer[LicenceAcceptance]) -> None:
        if self.principal.bound_product_id and serializer.validated_data.get("product") is None:
            raise ValidationError({"product": ["This key is bound to one product: an acceptance it records must "
                                               "name that product (an organisation-wide one needs another key)."]})
        serializer.instance = services.licence_accept(
            accepted_by=self.principal.label,
            user=self.request.user if self.principal.user is not None else None,
            **serializer.validated_data,
        )


class IsStaffForWrites(permissions.BasePermission):
    message = "Only Corral staff record Meta grants."

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        principal = principal_of(request)
        return bool(principal and principal.is_staff and principal.api_key is None)


class GrantViewSet(GroupTenancy, TenantViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                   mixins.CreateModelMixin):
    """Meta grants of the caller's group(s). Recorded by staff; append-only (a correction supersedes)."""

    queryset = MetaGrant.objects.select_related("group").prefetch_related("licence_versions")
    serializer_class = GrantSerializer
    tenant_field = "group__organisations"
    filterset_class = filters.GrantFilter
    permission_classes = [IsStaffForWrites]

    def get_permissions(self) -> list[Any]:
        from access.permissions import HasTenantScope

        if self.request.method in permissions.SAFE_METHODS:
            return [HasTenantScope(), IsStaffForWrites()]
        return [IsStaffForWrites()]

    def perform_create(self, serializer: BaseSerializer[MetaGrant]) -> None:
        data = dict(serializer.validated_data)
        serializer.instance = services.grant_record(recorded_by=self.principal.label, **data)
