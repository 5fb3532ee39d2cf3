from django.contrib import admin
from django.http import HttpRequest

from inference.models import GPU, Deployment, GatewayLimit, GpuAllocation, GpuQuota, Node, Replica, TokenUsage


class GPUInline(admin.TabularInline):
    model = GPU
    extra = 0


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "address", "backend", "cpu_only", "cpu_slots", "active"]
    list_filter = ["backend", "active", "cpu_only"]
    search_fields = ["name", "address"]
    inlines = [GPUInline]


@admin.register(GPU)
class GPUAdmin(admin.ModelAdmin):
    list_display = ["node", "index", "model", "memory_mib"]
    list_filter = ["node", "model"]
    search_fields = ["node__name", "model"]


@admin.register(GpuQuota)
class GpuQuotaAdmin(admin.ModelAdmin):
    list_display = ["organisation", "max_gpus", "max_cpu_replicas"]
    search_fields = ["organisation__name"]


class ReplicaInline(admin.TabularInline):
    model = Replica
    extra = 0
    fields = ("ordinal", "state", "node", "port", "pid", "restarts", "last_health_ok", "state_reason")
    readonly_fields = fields
    can_delete = False


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["served_model_name", "organisation", "base_model", "device", "replicas", "state", "deleted"]
    list_filter = ["state", "device", "deleted", "licence_version"]
    search_fields = ["served_model_name", "organisation__name", "base_model__repo_id"]
    readonly_fields = ["state", "state_reason", "crash_count", "created_by", "created_at", "updated_at"]
    inlines = [ReplicaInline]


@admin.register(Replica)
class ReplicaAdmin(admin.ModelAdmin):
    list_display = ["deployment", "ordinal", "state", "node", "port", "pid", "restarts", "last_health_at"]
    list_filter = ["state", "node"]
    search_fields = ["deployment__served_model_name"]
    exclude = ["key_salt"]  # the vLLM key is derived from it
    readonly_fields = ["endpoint", "port", "pid", "pod_name", "log_path", "metrics", "restarts", "started_at"]


@admin.register(GpuAllocation)
class GpuAllocationAdmin(admin.ModelAdmin):
    list_display = ["gpu", "replica", "allocated_at"]


@admin.register(GatewayLimit)
class GatewayLimitAdmin(admin.ModelAdmin):
    list_display = ["organisation", "requests_per_minute", "tokens_per_minute", "max_concurrent", "max_tokens", "max_n"]
    search_fields = ["organisation__name"]


@admin.register(TokenUsage)
class TokenUsageAdmin(admin.ModelAdmin):
    """Read-only: the gateway writes these rows."""

    list_display = ["day", "organisation", "api_key", "deployment", "requests", "prompt_tokens", "completion_tokens",
                    "requests_without_user"]
    list_filter = ["day", "organisation"]
    list_select_related = ["organisation", "api_key", "deployment"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TokenUsage | None = None) -> bool:
        return False
