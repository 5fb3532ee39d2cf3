from django.contrib import admin

from governance.models import ApiKey, AuditEvent, Heartbeat
from governance.services import api_key_revoke


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
