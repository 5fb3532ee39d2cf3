from __future__ import annotations

from typing import Any, cast

from rest_framework import serializers

from config.fields import SlugRelatedField
from inference.models import GPU, Deployment, GatewayLimit, GpuQuota, Node, Replica, TokenUsage
from licensing.api.serializers import TenantCreateMixin, TenantOrganisationField, products_writable_through
from licensing.models import BaseModel, LicenceVersion, Product


class ReplicaSerializer(serializers.ModelSerializer):
    """A replica as a tenant sees it: no endpoint address, no process details, never a key."""

    node: serializers.SlugRelatedField[Node] = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True)  # not placed yet
    gpus = serializers.SerializerMethodField()

    class Meta:
        model = Replica
        fields = ["ordinal", "state", "state_reason", "node", "gpus", "restarts", "started_at", "last_health_at",
                  "last_health_ok", "metrics"]

    def get_gpus(self, obj: Replica) -> list[int]:
        return [a.gpu.index for a in obj.gpu_allocations.all()]

    def to_representation(self, instance: Replica) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["metrics"] = {k: v for k, v in (instance.metrics or {}).items() if not k.startswith("_")}
        return data


class DeploymentSerializer(TenantCreateMixin, serializers.ModelSerializer):
    organisation = TenantOrganisationField(required=False)
    product = serializers.PrimaryKeyRelatedField(queryset=Product.objects.none())
    base_model = SlugRelatedField(slug_field="repo_id", queryset=BaseModel.objects.all())
    licence_version: serializers.SlugRelatedField[LicenceVersion] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True)
    replica_set = ReplicaSerializer(many=True, read_only=True)
    lora_adapters = serializers.DictField(child=serializers.CharField(max_length=500), required=False)
    extra_args = serializers.ListField(child=serializers.CharField(max_length=200), required=False, max_length=40)

    class Meta:
        model = Deployment
        fields = ["id", "organisation", "product", "licence_version", "base_model", "model_source",
                  "served_model_name", "device", "dtype", "max_model_len", "tensor_parallel_size",
                  "gpu_memory_utilization", "quantization", "lora_adapters", "extra_args", "replicas", "state",
                  "state_reason", "deleted", "crash_count", "created_by", "created_at", "replica_set"]
        read_only_fields = ["id", "licence_version", "state", "state_reason", "deleted", "crash_count", "created_by",
                            "created_at", "replica_set"]
        validators: list[Any] = []  # the service checks uniqueness and says which field
        extra_kwargs = {"model_source": {"required": False, "allow_blank": True,
                                         "help_text": "Defaults to the base model's repo id"}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        view = self.context.get("view")
        if view is not None and not getattr(view, "swagger_fake_view", False):
            product_field = cast("serializers.PrimaryKeyRelatedField[Product]", self.fields["product"])
            product_field.queryset = products_writable_through(view)


class ScaleSerializer(serializers.Serializer):
    replicas = serializers.IntegerField(min_value=0, max_value=16)


class NodeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Node
        fields = ["id", "name", "address", "backend", "labels", "cpu_only", "cpu_slots", "active"]


class GPUSerializer(serializers.ModelSerializer):
    allocated_to = serializers.SerializerMethodField()

    class Meta:
        model = GPU
        fields = ["id", "node", "index", "model", "memory_mib", "allocated_to"]

    def get_allocated_to(self, obj: GPU) -> int | None:
        allocation = getattr(obj, "allocation", None)
        return allocation.replica.deployment_id if allocation else None


class QuotaSerializer(serializers.ModelSerializer):
    class Meta:
        model = GpuQuota
        fields = ["id", "organisation", "max_gpus", "max_cpu_replicas"]


class TokenUsageSerializer(serializers.ModelSerializer):
    api_key_prefix = serializers.CharField(source="api_key.prefix", read_only=True)
    model = serializers.CharField(source="deployment.served_model_name", read_only=True)
    product = serializers.IntegerField(source="deployment.product_id", read_only=True)

    class Meta:
        model = TokenUsage
        fields = ["organisation", "api_key", "api_key_prefix", "deployment", "model", "product", "day", "requests",
                  "prompt_tokens", "completion_tokens", "cancelled_requests", "failed_requests",
                  "requests_without_user", "updated_at"]
        read_only_fields = fields


class UsageTotalsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cancelled_requests = serializers.IntegerField()
    failed_requests = serializers.IntegerField()
    requests_without_user = serializers.IntegerField()


class GatewayLimitSerializer(serializers.ModelSerializer):
    class Meta:
        model = GatewayLimit
        fields = ["id", "organisation", "requests_per_minute", "tokens_per_minute", "max_concurrent",
                  "key_requests_per_minute", "key_tokens_per_minute", "key_max_concurrent", "max_tokens", "max_n"]
