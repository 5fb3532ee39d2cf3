from django.contrib import admin

from access.keys import api_key_revoke
from access.models import ApiKey, AuditEvent
from governance.models import Heartbeat


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "organisation", "scopes", "product", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["organisation", "revoked_at"]
    search_fields = ["name", "prefix", "organisation__name"]
    # The hash is never shown; keys are created through the API or manage.py create_api_key.
    exclude = ["key_hash"]
    readonly_fields = [
        "name", "prefix", "organisation", "scopes", "product", "expires_at", "created_by", "created_at",
        "last_used_at", "revoked_at", "revoked_by",
    ]
    actions = ["revoke_keys"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    @admin.action(description="Revoke the selected keys")
    def revoke_keys(self, request, queryset):  # type: ignore[no-untyped-def]
        for api_key in queryset:
            api_key_revoke(api_key=api_key, revoked_by=f"user:{request.user.get_username()}")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["seq", "at", "action", "actor", "organisation", "group", "object_type", "object_id"]
    list_filter = ["action", "organisation", "group"]
    search_fields = ["action", "actor", "object_id"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    list_display = ["component", "seen_at"]


from governance.models import (  # noqa: E402 - grouped with the evaluation admin below
    AccessDecision,
    ActivityPart,
    Alert,
    ComplianceStatus,
    DeclaredFigure,
    DeliveryAttempt,
    GroupForecast,
    GroupPolicy,
    IdempotencyRecord,
    ProductMeteringPolicy,
    Rollup,
    StatusChange,
    WebhookDelivery,
    WebhookEndpoint,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the service itself: listed and searched here, changed only through it."""

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(ComplianceStatus)
class ComplianceStatusAdmin(ReadOnlyAdmin):
    list_display = ["group", "licence_version", "rule", "state", "month", "estimate", "lower", "upper", "evaluated_at"]
    list_filter = ["state", "rule", "licence_version"]
    search_fields = ["group__name", "explanation"]


@admin.register(StatusChange)
class StatusChangeAdmin(ReadOnlyAdmin):
    list_display = ["changed_at", "group", "licence_version", "rule", "previous_state", "state", "estimate"]
    list_filter = ["state", "rule"]
    search_fields = ["group__name"]


@admin.register(AccessDecision)
class AccessDecisionAdmin(ReadOnlyAdmin):
    list_display = ["group", "licence_version", "allowed", "reason", "decided_at"]
    list_filter = ["allowed", "reason"]
    search_fields = ["group__name"]


@admin.register(GroupForecast)
class GroupForecastAdmin(ReadOnlyAdmin):
    list_display = ["group", "crossing_date", "earliest", "latest", "daily_growth", "computed_at"]
    search_fields = ["group__name"]


@admin.register(GroupPolicy)
class GroupPolicyAdmin(admin.ModelAdmin):
    list_display = ["group", "mode", "grace_days", "levels", "forecast_days", "email_enabled", "webhooks_enabled"]
    list_filter = ["mode"]
    search_fields = ["group__name"]


@admin.register(DeclaredFigure)
class DeclaredFigureAdmin(ReadOnlyAdmin):
    list_display = ["group", "month", "mau", "declared_by", "declared_at"]
    search_fields = ["group__name", "evidence"]


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "group", "licence_version", "level", "kind", "month", "acknowledged_at"]
    list_filter = ["kind", "level"]
    search_fields = ["group__name", "message"]


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["url", "group", "active", "slack_format", "secret_prefix", "created_at"]
    list_filter = ["active", "slack_format"]
    search_fields = ["url", "group__name"]
    exclude = ["secret_salt"]
    readonly_fields = ["secret_prefix", "created_by", "group", "url"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False  # created through the API or portal, which validate the URL and show the secret once


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    readonly_fields = ["attempted_at", "status_code", "latency_ms", "error"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "endpoint", "event_type", "status", "attempts", "last_status_code", "next_attempt_at"]
    list_filter = ["status", "event_type"]
    search_fields = ["event_id", "endpoint__url"]
    inlines = [DeliveryAttemptInline]


@admin.register(ActivityPart)
class ActivityPartAdmin(ReadOnlyAdmin):
    list_display = ["product", "day", "source", "lg_k", "items", "created_at", "quarantined_at"]
    list_filter = ["source", ("quarantined_at", admin.EmptyFieldListFilter)]
    search_fields = ["product__name", "quarantine_reason"]
    exclude = ["sketch"]


@admin.register(Rollup)
class RollupAdmin(ReadOnlyAdmin):
    list_display = ["scope", "scope_id", "period", "lg_k", "id_batches", "sketch_uploads", "ids_received", "updated_at",
                    "quarantined_at"]
    list_filter = ["scope", ("quarantined_at", admin.EmptyFieldListFilter)]
    search_fields = ["scope_id", "quarantine_reason"]
    exclude = ["sketch"]


@admin.register(ProductMeteringPolicy)
class ProductMeteringPolicyAdmin(admin.ModelAdmin):
    list_display = ["product", "max_daily_users", "updated_at"]
    search_fields = ["product__name", "product__organisation__name"]
    autocomplete_fields = ["product"]


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ["organisation", "key", "status_code", "created_at"]
    search_fields = ["key", "organisation__name"]
