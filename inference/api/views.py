from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import Sum
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from access.api.tenancy import TenantViewSet
from access.principals import principal_of
from config.filters import DateFilter, FilterSet, IntegerFilter
from inference import services
from inference.api.serializers import (
    DeploymentSerializer,
    GatewayLimitSerializer,
    GPUSerializer,
    NodeSerializer,
    QuotaSerializer,
    ScaleSerializer,
    TokenUsageSerializer,
    UsageTotalsSerializer,
)
from inference.models import GPU, Deployment, GatewayLimit, GpuQuota, Node, TokenUsage


class UsageFilter(FilterSet):
    day_from = DateFilter(field_name="day", lookup_expr="gte")
    day_to = DateFilter(field_name="day", lookup_expr="lte")
    model = django_filters.CharFilter(field_name="deployment__served_model_name")
    product = IntegerFilter(field_name="deployment__product")

    class Meta:
        model = TokenUsage
        fields = ["day_from", "day_to", "api_key", "deployment", "model", "product", "organisation"]


_TOTALS = ("requests", "prompt_tokens", "completion_tokens", "cancelled_requests", "failed_requests",
           "requests_without_user")


class UsageViewSet(TenantViewSet, mixins.ListModelMixin):
    """Gateway use of the caller's keys: requests and tokens per key, deployment and UTC day.

    Written by the gateway every few seconds (GATEWAY_USAGE_FLUSH_SECONDS), so the last seconds may not be in
    yet. Filter with day_from/day_to, api_key, deployment, model, product; `totals` sums the same filter.
    """

    queryset = TokenUsage.objects.select_related("api_key", "deployment")
    serializer_class = TokenUsageSerializer
    filterset_class = UsageFilter

    def scope_queryset(self, queryset: Any) -> Any:
        bound = self.principal.bound_product_id
        return queryset.filter(deployment__product_id=bound) if bound else queryset

    @extend_schema(responses=UsageTotalsSerializer)
    @action(detail=False, methods=["get"])
    def totals(self, request: Request) -> Response:
        queryset = self.filter_queryset(self.get_queryset())
        sums = queryset.aggregate(**{name: Sum(name) for name in _TOTALS})
        return Response({name: sums[name] or 0 for name in _TOTALS})


class DeploymentViewSet(TenantViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin):
    """The caller's vLLM deployments: request, list, detail with replicas and health, scale, delete."""

    queryset = Deployment.objects.select_related("product", "base_model", "licence_version").prefetch_related(
        "replica_set__node", "replica_set__gpu_allocations__gpu")
    serializer_class = DeploymentSerializer
    filterset_fields = ["state", "product", "device", "deleted"]
    product_field = "product"

    def scope_queryset(self, queryset: Any) -> Any:
        # A deleted deployment leaves its URL at once (404, as DELETE promises), while its replicas drain;
        # the list shows its teardown and its history (?deleted=true).
        return queryset.filter(deleted=False) if self.detail else queryset

    @extend_schema(request=None, responses={202: DeploymentSerializer})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        """Delete the deployment: its replicas drain and stop (the answer is 202, the deployment ``draining``).
        Its URL answers 404 from now on; ``GET /deployments/?deleted=true`` shows it until and after it stops."""
        deployment = services.deployment_delete(deployment=self.get_object(), actor=self.principal.label)
        return Response(DeploymentSerializer(deployment, context=self.get_serializer_context()).data,
                        status=status.HTTP_202_ACCEPTED)

    def perform_create(self, serializer: BaseSerializer[Deployment]) -> None:
        serializer.instance = services.deployment_request(created_by=self.principal.label, **serializer.validated_data)

    @extend_schema(request=ScaleSerializer, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def scale(self, request: Request, pk: str | None = None) -> Response:
        form = ScaleSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        deployment = services.deployment_scale(deployment=self.get_object(), replicas=form.validated_data["replicas"],
                                               actor=self.principal.label)
        return Response(DeploymentSerializer(deployment, context=self.get_serializer_context()).data)


class IsStaffSession(permissions.BasePermission):
    message = "Only Corral staff manage the pool."

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = principal_of(request)
        return bool(principal and principal.is_staff and principal.api_key is None)


class StaffNodeViewSet(viewsets.ModelViewSet):
    """Staff: the pool's nodes."""

    queryset = Node.objects.all()
    serializer_class = NodeSerializer
    permission_classes = [IsStaffSession]


class StaffGPUViewSet(viewsets.ModelViewSet):
    queryset = GPU.objects.select_related("allocation__replica")
    serializer_class = GPUSerializer
    permission_classes = [IsStaffSession]


class StaffQuotaViewSet(viewsets.ModelViewSet):
    queryset = GpuQuota.objects.all()
    serializer_class = QuotaSerializer
    permission_classes = [IsStaffSession]


class StaffGatewayLimitViewSet(viewsets.ModelViewSet):
    """Staff: an organisation's gateway limits (empty fields take the GATEWAY_* defaults)."""

    queryset = GatewayLimit.objects.all()
    serializer_class = GatewayLimitSerializer
    permission_classes = [IsStaffSession]


class StaffDeploymentViewSet(viewsets.ReadOnlyModelViewSet):
    """Staff: every tenant's deployments (unscoped by design, staff sessions only)."""

    queryset = Deployment.objects.select_related("product", "base_model", "licence_version").prefetch_related(
        "replica_set__node", "replica_set__gpu_allocations__gpu")
    serializer_class = DeploymentSerializer
    permission_classes = [IsStaffSession]
    filterset_fields = ["state", "organisation", "device"]
