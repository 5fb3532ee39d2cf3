"""Metering endpoints: ingest activity for a product; read MAU of a product, an organisation or a group."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.filters import BaseFilterBackend
from rest_framework.request import Request
from rest_framework.response import Response

from access.api.tenancy import SAFE_METHODS, GroupTenancy, TenantViewSet
from access.models import AffiliateGroup, Organisation, Scope
from config.filters import iso_date
from governance.compliance import services as evaluation_services
from governance.metering import selectors, sketches
from governance.metering.activity_input import ActivityInputRefused, activity_input
from governance.metering.services import (
    IDEMPOTENCY_KEY,
    IDEMPOTENCY_KEY_RULE,
    Answer,
    IdempotencyConflict,
    activity_ingest,
    product_metering_policy_update,
    request_fingerprint,
    sketch_ingest,
)
from governance.models import ProductMeteringPolicy
from licensing.models import Product

if TYPE_CHECKING:
    from rest_framework.generics import BaseFilterProtocol  # in the stubs only

MAX_SERIES_DAYS = 400


@extend_schema_field({"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "integer", "format": "int64"}]},
                      "maxItems": 100_000})
class UserIdsField(serializers.Field):
    """Passed through untouched: the service checks 100,000 ids in C-speed passes, not one by one."""

    def to_internal_value(self, data: Any) -> Any:
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class ActivityInput(serializers.Serializer):
    day = serializers.DateField(help_text="UTC day, YYYY-MM-DD")
    user_ids = UserIdsField(
        help_text="Up to 100,000 ids: strings (UTF-8) or 64-bit integers. Send a keyed hash for privacy."
    )


class SketchInput(serializers.Serializer):
    day = serializers.DateField(help_text="UTC day, YYYY-MM-DD")
    format = serializers.CharField(default="hll", help_text='"hll": an Apache DataSketches HLL sketch')
    sketch = serializers.CharField(help_text=f"Base64 of the serialized sketch (lgK {sketches.MIN_UPLOAD_LG_K} to "
                                             f"{sketches.MAX_LG_K}, HLL_4/6/8)")


class AcceptedOutput(serializers.Serializer):
    accepted = serializers.IntegerField()
    day = serializers.DateField()
    product = serializers.IntegerField()


class ExcludedOutput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["part", "rollup"], help_text="An uploaded or pending part, or the "
                                   "stored total of the product-day")
    id = serializers.IntegerField()
    product = serializers.IntegerField()
    day = serializers.DateField()
    reason = serializers.CharField()
    quarantined_at = serializers.DateTimeField()


class CountOutput(serializers.Serializer):
    month = serializers.CharField(required=False)
    estimate = serializers.IntegerField()
    lower = serializers.IntegerField()
    upper = serializers.IntegerField()
    confidence = serializers.FloatField()
    method = serializers.CharField()
    lg_k = serializers.IntegerField()
    sources = serializers.DictField(child=serializers.IntegerField(), help_text="Requests by kind, ids received, "
                                    "parts not yet compacted, and quarantined sketches the figure leaves out")
    excluded = ExcludedOutput(many=True, help_text="The stored sketches that cannot be read and that this figure "
                              "therefore leaves out (docs/metering.md, \"Quarantine\")")


class MeteringPolicySerializer(serializers.ModelSerializer):
    max_daily_users = serializers.IntegerField(
        min_value=1, max_value=sketches.WORLD_POPULATION, allow_null=True, required=False,
        help_text="Most distinct users the product can have in a UTC day: an uploaded sketch that counts more, "
                  "alone or with what the day already holds, is refused. Empty: only the world's population.")
    # A product whose policy was never set is answered with the defaults, which were never saved.
    updated_at = serializers.DateTimeField(read_only=True, allow_null=True, help_text="null until first set")

    class Meta:
        model = ProductMeteringPolicy
        fields = ["max_daily_users", "updated_at"]


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise ValidationError({"Idempotency-Key": [IDEMPOTENCY_KEY_RULE]})
    return key


def _read_body(request: Request) -> bytes:
    # Read the raw body before DRF parses it: the idempotency fingerprint is taken over the exact bytes.
    # An oversized body raises RequestDataTooBig, which config/exceptions.py answers with a 413.
    return request._request.body


def _answer(answer: Answer) -> Response:
    response = Response(answer.body, status=answer.status_code)
    if answer.replayed:
        response["Idempotent-Replayed"] = "true"
    return response


EARLIEST, LATEST = dt.date(2000, 1, 1), dt.date(2999, 12, 31)


def _in_range(name: str, day: dt.date) -> dt.date:
    if not EARLIEST <= day <= LATEST:
        raise ValidationError({name: [f"Must be between {EARLIEST.isoformat()} and {LATEST.isoformat()}."]})
    return day


def _parse_month(value: str | None) -> dt.date:
    if not value:
        raise ValidationError({"month": ["Required, as YYYY-MM."]})
    try:
        return _in_range("month", dt.datetime.strptime(value, "%Y-%m").date())
    except ValueError as exc:
        raise ValidationError({"month": [f"{value!r} is not a month as YYYY-MM."]}) from exc


def _parse_day(name: str, value: str | None, *, required: bool = True) -> dt.date | None:
    if value is None or (value == "" and required):  # given but empty is no day (the schema says a date)
        if required:
            raise ValidationError({name: ["Required, as YYYY-MM-DD."]})
        return None
    day = iso_date(value)
    if day is None:
        raise ValidationError({name: [f"{value!r} is not a day as YYYY-MM-DD."]})
    return _in_range(name, day)


def _parse_window(value: str | None) -> int:
    if value is None:
        return 30
    if not re.fullmatch(r"[0-9]{1,3}", value) or not 1 <= int(value) <= 92:
        raise ValidationError({"days": ["Must be a whole number of days from 1 to 92."]})
    return int(value)


def _estimate_dict(estimate: Any) -> dict[str, Any]:
    return {"estimate": estimate.estimate, "lower": estimate.lower, "upper": estimate.upper}


class MauActions:
    """MAU, rolling, DAU and daily-series reads, shared by the product, organisation and group endpoints."""

    # Detail actions only: no list to filter or order. (The type is GenericAPIView's, as the viewsets mix both.)
    filter_backends: Sequence[type[BaseFilterBackend | BaseFilterProtocol[Any]]] = []

    get_object: Any

    @extend_schema(
        parameters=[
            OpenApiParameter("month", OpenApiTypes.STR, description="YYYY-MM: the calendar month"),
            OpenApiParameter("ending", OpenApiTypes.DATE, description="Instead of month: the last day of a "
                             "rolling window"),
            OpenApiParameter("days", OpenApiTypes.INT, description="Rolling window length (default 30)"),
        ],
        responses=CountOutput,
    )
    @action(detail=True, methods=["get"])
    def mau(self, request: Request, pk: str | None = None) -> Response:
        """Distinct users in a calendar month (``month``) or a rolling window ending on ``ending``."""
        scope = self.get_object()
        ending = _parse_day("ending", request.query_params.get("ending"), required=False)
        days = _parse_window(request.query_params.get("days"))  # checked with a month too: the schema types it
        if ending is not None:
            return Response(selectors.mau_rolling(scope=scope, ending=ending, days=days).as_dict())
        month = _parse_month(request.query_params.get("month"))
        answer = selectors.mau_month(scope=scope, month=month).as_dict()
        if isinstance(scope, AffiliateGroup):
            answer.update(evaluation_services.month_counting(group=scope, month=month))
        return Response(answer)

    @extend_schema(
        parameters=[OpenApiParameter("day", OpenApiTypes.DATE, required=True)], responses=CountOutput
    )
    @action(detail=True, methods=["get"])
    def dau(self, request: Request, pk: str | None = None) -> Response:
        """Distinct users on one UTC day."""
        scope = self.get_object()
        day = _parse_day("day", request.query_params.get("day"))
        return Response(selectors.dau(scope=scope, day=day).as_dict())  # type: ignore[arg-type]

    @extend_schema(
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATE, required=True),
            OpenApiParameter("to", OpenApiTypes.DATE, required=True),
            OpenApiParameter("days", OpenApiTypes.INT, description="Rolling window length (default 30)"),
        ],
        responses=OpenApiResponse(description="Daily DAU and rolling-window figures"),
    )
    @action(detail=True, methods=["get"], url_path="mau/daily")
    def mau_daily(self, request: Request, pk: str | None = None) -> Response:
        """For every day from ``from`` to ``to``: DAU and the rolling-window MAU ending that day."""
        scope = self.get_object()
        start = _parse_day("from", request.query_params.get("from"))
        end = _parse_day("to", request.query_params.get("to"))
        window = _parse_window(request.query_params.get("days"))
        assert start is not None and end is not None
        if end < start:
            raise ValidationError({"to": ["Must not be before from."]})
        if (end - start).days + 1 > MAX_SERIES_DAYS:
            raise ValidationError({"to": [f"A series covers at most {MAX_SERIES_DAYS} days."]})
        points = selectors.daily_series(scope=scope, start=start, end=end, window=window)
        excluded = selectors.excluded_sketches(scope=scope, start=start - dt.timedelta(days=window - 1), end=end)
        return Response(
            {
                "from": start.isoformat(), "to": end.isoformat(), "window_days": window, "confidence": 0.95,
                "days": [
                    {"day": p.day.isoformat(), "dau": _estimate_dict(p.dau), "rolling": _estimate_dict(p.rolling)}
                    for p in points
                ],
                "excluded": excluded,
            }
        )


class ProductMeteringViewSet(MauActions, TenantViewSet):
    """Activity of one product. Ingestion needs a key with the ``ingest`` scope in the product's organisation."""

    queryset = Product.objects.select_related("organisation")
    write_scope = Scope.INGEST

    def scope_queryset(self, queryset: QuerySet) -> QuerySet:
        bound = self.principal.bound_product_id
        return queryset.filter(pk=bound) if bound else queryset

    def required_scope(self, request: Request) -> str | None:
        if self.action == "metering_policy" and request.method not in SAFE_METHODS:
            return Scope.ADMIN  # the ceiling decides which uploads count: not for an ingestion key
        return super().required_scope(request)

    @extend_schema(methods=["GET"], responses=MeteringPolicySerializer)
    @extend_schema(methods=["PUT", "PATCH"], request=MeteringPolicySerializer, responses=MeteringPolicySerializer)
    @action(detail=True, methods=["get", "put", "patch"], url_path="metering-policy")
    def metering_policy(self, request: Request, pk: str | None = None) -> Response:
        """The product's ceiling on what its uploaded sketches may count; changing it needs the ``admin`` scope."""
        product = self.get_object()
        policy = selectors.product_metering_policy(product=product)
        if request.method in SAFE_METHODS:
            return Response(MeteringPolicySerializer(policy).data)
        form = MeteringPolicySerializer(policy, data=request.data, partial=request.method == "PATCH")
        form.is_valid(raise_exception=True)
        policy = product_metering_policy_update(policy=policy, actor=self.principal.label, **form.validated_data)
        return Response(MeteringPolicySerializer(policy).data)

    @extend_schema(request=ActivityInput, responses={
        202: AcceptedOutput, 409: OpenApiResponse(description="Idempotency-Key reused with another request")})
    @action(detail=True, methods=["post"])
    def activity(self, request: Request, pk: str | None = None) -> Response:
        """Record a batch of user ids (hashed on arrival, never stored) for a UTC day."""
        # Read as the fast path reads it (governance/metering/activity_input.py): ActivityInput is the schema only.
        body = _read_body(request)
        product = self.get_object()
        key = _idempotency_key(request)
        try:
            batch = activity_input(body, content_type=request.content_type, path=request.path)
        except ActivityInputRefused as exc:
            return Response(exc.errors, status=exc.status)
        return self._respond(request, body, lambda **kw: activity_ingest(
            product=product, day=batch.day, user_ids=batch.user_ids, elements_checked=batch.elements_checked,
            idempotency_key=key, **kw))

    @extend_schema(request=SketchInput, responses={
        202: AcceptedOutput, 409: OpenApiResponse(description="Idempotency-Key reused with another request")})
    @action(detail=True, methods=["post"])
    def sketches(self, request: Request, pk: str | None = None) -> Response:
        """Record a DataSketches HLL sketch of the product's users on a UTC day, built by the tenant."""
        return self._ingest(request, SketchInput, lambda product, data, **kw: sketch_ingest(
            product=product, day=data["day"], encoded_sketch=data["sketch"], sketch_format=data["format"], **kw))

    def _ingest(self, request: Request, form_class: type[serializers.Serializer], ingest: Any) -> Response:
        body = _read_body(request)
        product = self.get_object()
        key = _idempotency_key(request)
        form = form_class(data=request.data)
        form.is_valid(raise_exception=True)
        return self._respond(request, body, lambda **kw: ingest(product, form.validated_data, idempotency_key=key,
                                                                **kw))

    @staticmethod
    def _respond(request: Request, body: bytes, ingest: Any) -> Response:
        try:
            answer = ingest(fingerprint=request_fingerprint(request.method or "", request.path, body))
        except IdempotencyConflict as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return _answer(answer)


class OrganisationMeteringViewSet(MauActions, TenantViewSet):
    queryset = Organisation.objects.all()
    tenant_field = "pk"


class GroupMeteringViewSet(MauActions, GroupTenancy, TenantViewSet):
    """The affiliate group's figures: the union over every product of every organisation in the group."""

    queryset = AffiliateGroup.objects.all()
