"""Compliance endpoints: statuses, history, policy, declared figures, alerts, webhooks, audit, evidence."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from access.api.tenancy import GroupTenancy, TenantViewSet
from access.audit import audit_events_visible, audit_verify_cached
from access.models import AffiliateGroup, AuditEvent, Organisation, Scope
from access.principals import ActorView, actors_for_viewer, principal_of
from config.fields import MonthField
from governance.compliance import evidence
from governance.compliance import services as evaluation_services
from governance.models import (
    AccessDecision,
    Alert,
    ComplianceStatus,
    CoverageAttestation,
    DeclarationProposal,
    DeclaredFigure,
    DeliveryAttempt,
    GroupForecast,
    GroupPolicy,
    StatusChange,
    WebhookDelivery,
    WebhookEndpoint,
)
from licensing.models import LicenceVersion

# --- serializers --------------------------------------------------------------------------------------------


class ExcludedStatusOutput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["part", "rollup"], help_text="A stored part or a product-day rollup")
    product = serializers.IntegerField()
    product_name = serializers.CharField()
    day = serializers.DateField()
    reason = serializers.CharField()


class ComplianceStatusSerializer(serializers.ModelSerializer):
    licence_version: serializers.SlugRelatedField[LicenceVersion] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True)
    # The stubs see Field.label (a Serializer is a Field); DRF's metaclass moves declared fields off the class.
    label = serializers.SerializerMethodField(  # type: ignore[assignment]
        help_text='The state as a person reads it: "below (partial coverage)" '
                  "when the metered figure does not cover the whole group")
    bases = serializers.SerializerMethodField(help_text="The metered figure on both counting bases, side by side")
    figures = serializers.SerializerMethodField(help_text="Every figure of the month and the state each alone gives")
    excluded = serializers.SerializerMethodField(help_text="Stored sketches of the month that could not be read "
                                                           "(quarantined): the metered figures leave them out")

    class Meta:
        model = ComplianceStatus
        fields = ["licence_version", "rule", "state", "label", "level", "month", "source", "basis", "estimate",
                  "lower", "upper", "threshold", "bases", "figures", "excluded", "coverage", "explanation", "since",
                  "evaluated_at"]

    def get_label(self, obj: ComplianceStatus) -> str:
        return obj.label

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_bases(self, obj: ComplianceStatus) -> dict[str, Any]:
        return obj.bases

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_figures(self, obj: ComplianceStatus) -> list[dict[str, Any]]:
        return obj.figures

    @extend_schema_field(ExcludedStatusOutput(many=True))
    def get_excluded(self, obj: ComplianceStatus) -> list[dict[str, Any]]:
        return obj.excluded


class StatusChangeSerializer(serializers.ModelSerializer):
    licence_version: serializers.SlugRelatedField[LicenceVersion] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True)

    class Meta:
        model = StatusChange
        fields = ["id", "licence_version", "rule", "previous_state", "state", "month", "estimate", "lower", "upper",
                  "explanation", "changed_at"]


class AccessDecisionSerializer(serializers.ModelSerializer):
    licence_version: serializers.SlugRelatedField[LicenceVersion] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True)

    class Meta:
        model = AccessDecision
        fields = ["licence_version", "allowed", "reason", "detail", "decided_at"]


class ForecastSerializer(serializers.ModelSerializer):
    class Meta:
        model = GroupForecast
        fields = ["method", "points", "daily_growth", "crossing_date", "earliest", "latest", "computed_at"]


class PolicySerializer(serializers.ModelSerializer):
    levels = serializers.ListField(child=serializers.FloatField(min_value=0.01, max_value=0.999), min_length=1,
                                   max_length=10)
    email_recipients = serializers.ListField(child=serializers.EmailField(), max_length=50, required=False)
    hysteresis = serializers.FloatField(min_value=0.0, max_value=0.2)
    grace_days = serializers.IntegerField(min_value=0, max_value=365)
    forecast_days = serializers.IntegerField(min_value=1, max_value=730)

    class Meta:
        model = GroupPolicy
        fields = ["mode", "grace_days", "levels", "hysteresis", "forecast_days", "email_enabled", "email_recipients",
                  "webhooks_enabled", "counting_basis", "on_unknown", "updated_at"]
        read_only_fields = ["updated_at"]

    def validate_levels(self, value: list[float]) -> list[float]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("Levels must be distinct.")
        return sorted(value)


class DeclaredFigureSerializer(serializers.ModelSerializer):
    month = MonthField()
    mau = serializers.IntegerField(min_value=0, max_value=10**12)
    lower = serializers.IntegerField(min_value=0, max_value=10**12, required=False, allow_null=True,
                                     help_text="Lower bound of the figure (omit both bounds for a point figure)")
    upper = serializers.IntegerField(min_value=0, max_value=10**12, required=False, allow_null=True,
                                     help_text="Upper bound of the figure")

    class Meta:
        model = DeclaredFigure
        fields = ["id", "month", "mau", "lower", "upper", "evidence", "declared_by", "declared_at"]
        read_only_fields = ["id", "declared_by", "declared_at"]
        # The bounds against the figure are checked by declared_figure_record alone: its ValidationError becomes
        # the same 400 naming the field (config/exceptions.py).



class AttestationSerializer(serializers.ModelSerializer):
    month = MonthField()
    statement = serializers.CharField(max_length=5000, help_text="What was checked, by whom, against which list")

    class Meta:
        model = CoverageAttestation
        fields = ["id", "month", "statement", "products", "attested_by", "attested_at"]
        read_only_fields = ["id", "products", "attested_by", "attested_at"]



class DeclarationProposalSerializer(serializers.ModelSerializer):
    month = MonthField()
    mau = serializers.IntegerField(min_value=0, max_value=10**12)
    group = serializers.PrimaryKeyRelatedField(queryset=AffiliateGroup.objects.none(), required=False)
    declared_figure: serializers.PrimaryKeyRelatedField[DeclaredFigure] = serializers.PrimaryKeyRelatedField(
        read_only=True)

    class Meta:
        model = DeclarationProposal
        fields = ["id", "group", "organisation", "month", "mau", "evidence", "proposed_by", "proposed_at", "status",
                  "decided_by", "decided_at", "decision_note", "declared_figure"]
        read_only_fields = ["id", "organisation", "proposed_by", "proposed_at", "status", "decided_by",
                            "decided_at", "decision_note", "declared_figure"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        view = self.context.get("view")
        if view is not None and not getattr(view, "swagger_fake_view", False):
            cast("serializers.PrimaryKeyRelatedField[AffiliateGroup]", self.fields["group"]).queryset = (
                AffiliateGroup.objects.filter(organisations__in=view.writable_organisation_ids()).distinct())



class DecisionSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, max_length=2000)


class AlertSerializer(serializers.ModelSerializer):
    licence_version: serializers.SlugRelatedField[LicenceVersion] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True)

    class Meta:
        model = Alert
        fields = ["id", "group", "licence_version", "level", "kind", "month", "rule", "figures", "message",
                  "created_at", "acknowledged_at", "acknowledged_by", "acknowledgement_note", "emailed_at"]
        read_only_fields = fields


class WebhookEndpointSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookEndpoint
        fields = ["id", "group", "url", "description", "slack_format", "active", "secret_prefix", "created_by",
                  "created_at"]
        read_only_fields = ["id", "secret_prefix", "created_by", "created_at"]

    def to_representation(self, instance: WebhookEndpoint) -> dict[str, Any]:
        data = super().to_representation(instance)
        if instance.group_id not in self.context.get("full_url_groups", {instance.group_id}):
            # A webhook URL's path can itself be a credential (Slack's are): readers see only its origin.
            from urllib.parse import urlsplit

            parts = urlsplit(instance.url)
            data["url"] = f"{parts.scheme}://{parts.netloc}/…"
        return data


class WebhookEndpointCreateSerializer(serializers.Serializer):
    group = serializers.PrimaryKeyRelatedField(queryset=AffiliateGroup.objects.none(), required=False)
    url = serializers.URLField(max_length=500)
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    slack_format = serializers.BooleanField(required=False, default=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        view = self.context.get("view")
        if view is not None and not getattr(view, "swagger_fake_view", False):
            cast("serializers.PrimaryKeyRelatedField[AffiliateGroup]", self.fields["group"]).queryset = (
                view.administered_groups())


class WebhookCreatedSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(read_only=True, help_text="The signing secret. Shown this once.")

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]


class DeliveryAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = ["attempted_at", "status_code", "latency_ms", "error"]


class WebhookDeliverySerializer(serializers.ModelSerializer):
    attempt_log = DeliveryAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = ["id", "event_id", "event_type", "status", "attempts", "next_attempt_at", "last_status_code",
                  "created_at", "delivered_at", "payload", "attempt_log"]


class AuditEventSerializer(serializers.ModelSerializer):
    prev_hash = serializers.CharField(allow_null=True, help_text=(
        "Null where the entry names another organisation's key you may not see (its hash would reveal it)"))
    hash = serializers.CharField(allow_null=True, help_text=(
        "Null where the entry names another organisation's key you may not see; GET /audit/verify checks the chain"))

    class Meta:
        model = AuditEvent
        fields = ["seq", "at", "actor", "action", "organisation", "group", "object_type", "object_id", "data",
                  "prev_hash", "hash"]


# --- views --------------------------------------------------------------------------------------------------


def _month_param(request: Request) -> dt.date:
    from governance.metering.api import _parse_month

    return _parse_month(request.query_params.get("month"))


class GroupComplianceViewSet(GroupTenancy, TenantViewSet):
    """A group's compliance: statuses per version and rule, decisions, forecast, history, policy, evidence."""

    queryset = AffiliateGroup.objects.all()
    filter_backends: list[Any] = []  # detail actions only: no list to filter or order (?ordering= was a 500)

    def required_scope(self, request: Request) -> str | None:
        if self.action in ("policy", "declarations", "attestations") and request.method not in ("GET", "HEAD",
                                                                                                 "OPTIONS"):
            return Scope.ADMIN  # both can unblock the gate: a policy mode, or a declared figure
        return super().required_scope(request)

    def needs_group_admin(self, request: Request) -> bool:
        # Evaluating again changes nothing the group is judged by: it recomputes from the recorded figures.
        return self.action != "evaluate" and super().needs_group_admin(request)

    @extend_schema(responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["get"])
    def compliance(self, request: Request, pk: str | None = None) -> Response:
        """Current status per licence version and rule, the access decisions and the forecast."""
        group = self.get_object()
        statuses = ComplianceStatus.objects.filter(group=group).select_related("licence_version").order_by(
            "licence_version__release_date", "rule")
        forecast = GroupForecast.objects.filter(group=group).first()
        return Response({
            "group": group.pk,
            "statuses": ComplianceStatusSerializer(statuses, many=True).data,
            "months_to_declare": evaluation_services.months_to_declare(group=group),
            "decisions": AccessDecisionSerializer(
                AccessDecision.objects.filter(group=group).select_related("licence_version"), many=True).data,
            "forecast": ForecastSerializer(forecast).data if forecast else None,
        })

    @extend_schema(request=None, responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["post"])
    def evaluate(self, request: Request, pk: str | None = None) -> Response:
        """Evaluate the group now (otherwise hourly, and seconds after new activity)."""
        result = evaluation_services.group_evaluate(group=self.get_object())
        return Response({"statuses": ComplianceStatusSerializer(result.statuses, many=True).data,
                         "alerts": AlertSerializer(result.alerts, many=True).data})

    @extend_schema(responses=StatusChangeSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="compliance/history")
    def history(self, request: Request, pk: str | None = None) -> Response:
        changes = StatusChange.objects.filter(group=self.get_object()).select_related("licence_version")
        page = self.paginate_queryset(changes)
        return self.get_paginated_response(StatusChangeSerializer(page, many=True).data)

    @extend_schema(methods=["GET"], responses=PolicySerializer)
    @extend_schema(methods=["PUT", "PATCH"], request=PolicySerializer, responses=PolicySerializer)
    @action(detail=True, methods=["get", "put", "patch"])
    def policy(self, request: Request, pk: str | None = None) -> Response:
        """The group's alert and enforcement policy; changing it needs the ``admin`` scope."""
        policy = evaluation_services.group_policy_get(group=self.get_object())
        if request.method == "GET":
            return Response(PolicySerializer(policy).data)
        form = PolicySerializer(policy, data=request.data, partial=request.method == "PATCH")
        form.is_valid(raise_exception=True)
        policy = evaluation_services.group_policy_update(policy=policy, actor=self.principal.label,
                                                         **form.validated_data)
        return Response(PolicySerializer(policy).data)

    @extend_schema(methods=["GET"], responses=DeclaredFigureSerializer(many=True))
    @extend_schema(methods=["POST"], request=DeclaredFigureSerializer, responses={201: DeclaredFigureSerializer})
    @action(detail=True, methods=["get", "post"])
    def declarations(self, request: Request, pk: str | None = None) -> Response:
        """Figures declared for months before metering started, with their evidence (append-only)."""
        group = self.get_object()
        if request.method == "GET":
            # Paginated like the other lists (and as the schema has always said): it was a bare list.
            page = self.paginate_queryset(DeclaredFigure.objects.filter(group=group))
            return self.get_paginated_response(DeclaredFigureSerializer(page, many=True).data)
        form = DeclaredFigureSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        month = form.validated_data["month"]
        figure = evaluation_services.declared_figure_record(
            group=group, month=month, mau=form.validated_data["mau"], evidence=form.validated_data["evidence"],
            declared_by=self.principal.label, lower=form.validated_data.get("lower"),
            upper=form.validated_data.get("upper"))
        return Response(DeclaredFigureSerializer(figure).data, status=status.HTTP_201_CREATED)

    @extend_schema(methods=["GET"], responses=AttestationSerializer(many=True))
    @extend_schema(methods=["POST"], request=AttestationSerializer, responses={201: AttestationSerializer})
    @action(detail=True, methods=["get", "post"])
    def attestations(self, request: Request, pk: str | None = None) -> Response:
        """Attest that the group's registered products and services are all of them for a month (group admins);
        a metered "below" without it reads "below (partial coverage)". Append-only."""
        group = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(CoverageAttestation.objects.filter(group=group))
            return self.get_paginated_response(AttestationSerializer(page, many=True).data)
        form = AttestationSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        month = form.validated_data["month"]
        attestation = evaluation_services.coverage_attest(
            group=group, month=month, statement=form.validated_data["statement"], attested_by=self.principal.label)
        return Response(AttestationSerializer(attestation).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("month", OpenApiTypes.STR, required=True, description="YYYY-MM"),
                    OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv", "html"])],
        responses={(200, "application/json"): OpenApiTypes.OBJECT, (200, "text/csv"): OpenApiTypes.STR,
                   (200, "text/html"): OpenApiTypes.STR},
    )
    @action(detail=True, methods=["get"], url_path="evidence")
    def evidence(self, request: Request, pk: str | None = None) -> Any:
        """The evidence report for a month: JSON (default), CSV, or a printable HTML page."""
        group = self.get_object()
        month = _month_param(request)
        report = actors_for_viewer(evidence.evidence_report(group=group, month=month), self.principal)
        kind = request.query_params.get("format", "json")
        if kind == "csv":
            response = HttpResponse(evidence.evidence_csv(report), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="corral-evidence-{group.slug}-{month:%Y-%m}.csv"'
            return response
        if kind == "html":
            return HttpResponse(evidence.evidence_html(report), content_type="text/html; charset=utf-8")
        if kind != "json":
            raise ValidationError({"format": ["One of json, csv, html."]})
        return Response(report)


class DeclarationProposalViewSet(GroupTenancy, TenantViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Figures an organisation of a group proposes to declare for a month. Any organisation admin of the group
    may propose; a group admin confirms (the figure is then declared) or rejects. Until then it counts for
    nothing."""

    queryset = DeclarationProposal.objects.select_related("group", "organisation")
    serializer_class = DeclarationProposalSerializer
    tenant_field = "group__organisations"
    write_scope = Scope.ADMIN
    filterset_fields = ["group", "status"]

    def needs_group_admin(self, request: Request) -> bool:
        return self.action in ("confirm", "reject")

    @extend_schema(request=DeclarationProposalSerializer, responses={201: DeclarationProposalSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Propose a figure (``admin`` scope in an organisation of the group)."""
        form = DeclarationProposalSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        group = form.validated_data.get("group")
        writable = self.writable_organisation_ids()
        if group is None:
            groups = AffiliateGroup.objects.filter(organisations__in=writable).distinct()
            if groups.count() != 1:
                raise ValidationError({"group": ["Required: this credential is an admin in more than one group."]})
            group = groups.get()
        organisation = Organisation.objects.filter(group=group, pk__in=writable).order_by("pk").first()
        if organisation is None:  # the group's choices are those of writable organisations: not reached
            raise ValidationError({"group": ["This credential writes in no organisation of that group."]})
        proposal = evaluation_services.declaration_propose(
            group=group, organisation=organisation, month=form.validated_data["month"],
            mau=form.validated_data["mau"], evidence=form.validated_data["evidence"], proposed_by=self.principal.label)
        return Response(DeclarationProposalSerializer(proposal).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=DecisionSerializer, responses=DeclarationProposalSerializer)
    @action(detail=True, methods=["post"])
    def confirm(self, request: Request, pk: str | None = None) -> Response:
        """Confirm the proposal: its figure is declared for the group (group admins only)."""
        return self._decide(request, confirm=True)

    @extend_schema(request=DecisionSerializer, responses=DeclarationProposalSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str | None = None) -> Response:
        """Reject the proposal; it stays on record (group admins only)."""
        return self._decide(request, confirm=False)

    def _decide(self, request: Request, *, confirm: bool) -> Response:
        proposal = self.get_object()
        form = DecisionSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        proposal = evaluation_services.declaration_proposal_decide(
            proposal=proposal, confirm=confirm, actor=self.principal.label, note=form.validated_data.get("note", ""))
        return Response(DeclarationProposalSerializer(proposal).data)


class AlertViewSet(GroupTenancy, TenantViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    queryset = Alert.objects.select_related("licence_version")
    serializer_class = AlertSerializer
    tenant_field = "group__organisations"
    filterset_fields = ["group", "level", "kind", "month"]

    @extend_schema(request=None, responses=AlertSerializer)
    @action(detail=True, methods=["post"])
    def acknowledge(self, request: Request, pk: str | None = None) -> Response:
        alert = evaluation_services.alert_acknowledge(alert=self.get_object(), actor=self.principal.label)
        return Response(AlertSerializer(alert).data)


class WebhookEndpointUpdateSerializer(serializers.Serializer):
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    slack_format = serializers.BooleanField(required=False)
    active = serializers.BooleanField(required=False)


class WebhookEndpointViewSet(GroupTenancy, TenantViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Webhook endpoints of the caller's group. Managing them needs the ``admin`` scope."""

    queryset = WebhookEndpoint.objects.all()
    serializer_class = WebhookEndpointSerializer
    tenant_field = "group__organisations"
    write_scope = Scope.ADMIN

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        # A webhook URL's path can itself be a credential (Slack's are): only the group's admins see it whole.
        context["full_url_groups"] = self.principal.admin_group_ids
        return context

    @extend_schema(request=WebhookEndpointCreateSerializer, responses={201: WebhookCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        from governance.webhooks.services import webhook_endpoint_create

        form = WebhookEndpointCreateSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        group = form.validated_data.get("group")
        if group is None:
            groups = self.administered_groups()
            if groups.count() != 1:
                raise ValidationError({"group": ["Required: this credential can administer more than one group."]})
            group = groups.get()
        endpoint, secret = webhook_endpoint_create(
            group=group, url=form.validated_data["url"], created_by=self.principal.label,
            description=form.validated_data.get("description", ""), slack_format=form.validated_data["slack_format"])
        endpoint.secret = secret  # type: ignore[attr-defined]
        return Response(WebhookCreatedSerializer(endpoint).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=WebhookEndpointUpdateSerializer, responses=WebhookEndpointSerializer)
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        """Change the description, the Slack format or the active flag (the URL is fixed)."""
        from governance.webhooks.services import webhook_endpoint_update

        endpoint = self.get_object()
        extra = sorted(set(request.data) - set(WebhookEndpointUpdateSerializer().fields))
        if extra:
            raise ValidationError({field: ["This field cannot be changed."] for field in extra})
        form = WebhookEndpointUpdateSerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        endpoint = webhook_endpoint_update(endpoint=endpoint, actor=self.principal.label, **form.validated_data)
        return Response(WebhookEndpointSerializer(endpoint, context=self.get_serializer_context()).data)

    @extend_schema(request=None, responses={204: None})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        from governance.webhooks.services import webhook_endpoint_delete

        webhook_endpoint_delete(endpoint=self.get_object(), actor=self.principal.label)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={202: WebhookDeliverySerializer})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str | None = None) -> Response:
        """Send a test event now; its delivery appears in the endpoint's delivery log."""
        from governance.webhooks.services import webhook_test_send

        delivery = webhook_test_send(endpoint=self.get_object(), actor=self.principal.label)
        delivery.refresh_from_db()  # with eager tasks (tests, a worker-less setup) it was tried already
        return Response(WebhookDeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={200: WebhookCreatedSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        """Replace the signing secret; the new one is shown once."""
        from governance.webhooks.services import webhook_endpoint_rotate_secret

        endpoint = self.get_object()
        secret = webhook_endpoint_rotate_secret(endpoint=endpoint, actor=self.principal.label)
        endpoint.refresh_from_db()
        endpoint.secret = secret
        return Response(WebhookCreatedSerializer(endpoint).data)

    @extend_schema(responses=WebhookDeliverySerializer(many=True))
    @action(detail=True, methods=["get"])
    def deliveries(self, request: Request, pk: str | None = None) -> Response:
        deliveries = WebhookDelivery.objects.filter(endpoint=self.get_object()).prefetch_related("attempt_log")
        page = self.paginate_queryset(deliveries)
        return self.get_paginated_response(WebhookDeliverySerializer(page, many=True).data)


class AuditEventViewSet(TenantViewSet, mixins.ListModelMixin):
    """The audit log entries of the caller's group, and whether the whole chain verifies."""

    queryset = AuditEvent.objects.all()
    serializer_class = AuditEventSerializer
    tenant_field = "group__organisations"
    filterset_fields = ["action", "organisation"]

    def scope_queryset(self, queryset: QuerySet) -> QuerySet:
        visible = audit_events_visible(principal=self.principal).values("pk")
        return queryset.filter(pk__in=visible).distinct().order_by("-seq")

    def finalize_response(self, request: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        # Before the base class shows hidden keys as "an API key of ...": an entry naming one loses its hashes.
        data = getattr(response, "data", None)
        entries = data.get("results") if isinstance(data, dict) else data
        if isinstance(entries, list):
            view = ActorView(principal_of(request))
            for entry in entries:
                if isinstance(entry, dict) and view.hides([entry.get("actor"), entry.get("data")]):
                    entry["hash"] = entry["prev_hash"] = None
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(responses=OpenApiTypes.OBJECT)
    @action(detail=False, methods=["get"])
    def verify(self, request: Request) -> Response:
        result = audit_verify_cached()
        head = AuditEvent.objects.order_by("-seq").only("seq", "hash").first()
        return Response({"ok": result.ok, "checked": result.checked, "first_bad_seq": result.first_bad_seq,
                         "reason": result.reason, "head": {"seq": head.seq, "hash": head.hash} if head else None})
