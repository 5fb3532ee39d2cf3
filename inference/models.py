"""The GPU pool: nodes and their GPUs, quotas, deployments (desired state) and replicas (the world)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from access.models import Organisation
from licensing.models import BaseModel, LicenceVersion, Product


class Backend(models.TextChoices):
    LOCAL = "local", "Local processes"
    KUBERNETES = "kubernetes", "Kubernetes"


class Node(models.Model):
    name = models.CharField(max_length=100, unique=True)
    address = models.CharField(max_length=200, help_text="Host replicas are reached at (local: 127.0.0.1)")
    backend = models.CharField(max_length=20, choices=Backend.choices, default=Backend.LOCAL)
    labels = models.JSONField(default=dict, blank=True)
    cpu_only = models.BooleanField(default=False, help_text="Serves with the CPU build of vLLM (no GPUs needed)")
    cpu_slots = models.PositiveIntegerField(default=0, help_text="Replicas a CPU-only node can run at once")
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class GPU(models.Model):
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField()
    model = models.CharField(max_length=100, help_text="e.g. NVIDIA H100 80GB")
    memory_mib = models.PositiveIntegerField()

    class Meta:
        ordering = ["node__name", "index"]
        constraints = [models.UniqueConstraint(fields=["node", "index"], name="one_gpu_per_node_index")]

    def __str__(self) -> str:
        return f"{self.node.name}:{self.index} ({self.model})"


class GpuQuota(models.Model):
    organisation = models.OneToOneField(Organisation, on_delete=models.CASCADE, related_name="gpu_quota")
    max_gpus = models.PositiveIntegerField(default=0)
    max_cpu_replicas = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.organisation}: {self.max_gpus} GPUs"


class DeploymentState(models.TextChoices):
    PENDING = "pending", "Pending"
    SCHEDULING = "scheduling", "Scheduling"
    STARTING = "starting", "Starting"
    READY = "ready", "Ready"
    DRAINING = "draining", "Draining"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"


class Deployment(models.Model):
    """What a tenant asked for. The reconciler converges the replicas to it."""

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="deployments")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="deployments")
    licence_version = models.ForeignKey(LicenceVersion, on_delete=models.PROTECT, related_name="+")
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="deployments")
    class Device(models.TextChoices):
        GPU = "gpu", "GPU"
        CPU = "cpu", "CPU (vLLM's CPU build)"

    device = models.CharField(max_length=3, choices=Device.choices, default=Device.GPU)
    model_source = models.CharField(max_length=500, help_text="Hugging Face repo id or an allowed local path")
    served_model_name = models.CharField(max_length=100)
    dtype = models.CharField(max_length=10, default="auto")
    max_model_len = models.PositiveIntegerField(default=4096, validators=[MinValueValidator(16)])
    tensor_parallel_size = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1),
                                                                                   MaxValueValidator(8)])
    gpu_memory_utilization = models.FloatField(default=0.9, validators=[MinValueValidator(0.05),
                                                                        MaxValueValidator(0.98)])
    quantization = models.CharField(max_length=20, blank=True)
    lora_adapters = models.JSONField(default=dict, blank=True, help_text="name -> path or repo id")
    extra_args = models.JSONField(default=list, blank=True)
    replicas = models.PositiveSmallIntegerField(default=1, validators=[MaxValueValidator(16)])
    state = models.CharField(max_length=12, choices=DeploymentState.choices, default=DeploymentState.PENDING)
    state_reason = models.TextField(blank=True)
    deleted = models.BooleanField(default=False, help_text="Asked to be removed: drain, stop, then keep as record")
    crash_count = models.PositiveIntegerField(default=0)
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "served_model_name"], condition=models.Q(deleted=False),
                                    name="one_live_deployment_per_served_name")
        ]

    def __str__(self) -> str:
        return f"{self.served_model_name} ({self.organisation})"

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel_size


class ReplicaState(models.TextChoices):
    SCHEDULING = "scheduling", "Scheduling"
    STARTING = "starting", "Starting"
    READY = "ready", "Ready"
    UNHEALTHY = "unhealthy", "Unhealthy"
    DRAINING = "draining", "Draining"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"


def replica_key(replica_id: int, salt: str) -> str:
    """vLLM's API key of a replica: derived from a Corral secret and the replica's salt, so it is never stored."""
    digest = hmac.new(settings.INFERENCE_KEY_SECRET.encode(), f"replica:{replica_id}:{salt}".encode(),
                      hashlib.sha256).digest()
    return "vllm-" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


class Replica(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replica_set")
    ordinal = models.PositiveSmallIntegerField()
    node = models.ForeignKey(Node, on_delete=models.PROTECT, null=True, blank=True, related_name="replicas")
    state = models.CharField(max_length=12, choices=ReplicaState.choices, default=ReplicaState.SCHEDULING)
    state_reason = models.TextField(blank=True)
    endpoint = models.CharField(max_length=300, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    pod_name = models.CharField(max_length=200, blank=True)
    log_path = models.CharField(max_length=500, blank=True)
    key_salt = models.CharField(max_length=64, blank=True, help_text="The vLLM key is derived from it; never stored")
    restarts = models.PositiveIntegerField(default=0)
    next_start_at = models.DateTimeField(null=True, blank=True, help_text="Backoff: not restarted before this")
    started_at = models.DateTimeField(null=True, blank=True)
    stopping_until = models.DateTimeField(
        null=True, blank=True, help_text="Stop asked: its grace period (or a crash's clean-up) ends then")
    last_health_at = models.DateTimeField(null=True, blank=True)
    last_health_ok = models.BooleanField(default=False)
    consecutive_health_failures = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["deployment_id", "ordinal"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "ordinal"], name="one_replica_per_ordinal"),
            models.UniqueConstraint(fields=["node", "port"], condition=models.Q(port__isnull=False),
                                    name="one_replica_per_node_port"),
        ]

    def __str__(self) -> str:
        return f"{self.deployment.served_model_name}#{self.ordinal}"


class GpuAllocation(models.Model):
    """A GPU held by a replica. The unique GPU is what makes double allocation impossible, also under races."""

    gpu = models.OneToOneField(GPU, on_delete=models.PROTECT, related_name="allocation")
    replica = models.ForeignKey(Replica, on_delete=models.CASCADE, related_name="gpu_allocations")
    allocated_at = models.DateTimeField(auto_now_add=True)


class GatewayLimit(models.Model):
    """An organisation's gateway limits; an empty field takes the GATEWAY_* setting's default.

    The organisation-wide limits hold across all its keys; the per-key limits hold for each key of the
    organisation that sets none of its own (ApiKey.*_limit).
    """

    organisation = models.OneToOneField(Organisation, on_delete=models.CASCADE, related_name="gateway_limit")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)
    key_requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    key_tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    key_max_concurrent = models.PositiveIntegerField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True, help_text="Cap on a request's max_tokens")
    max_n = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Cap on a request's n")

    def __str__(self) -> str:
        return f"Gateway limits of {self.organisation}"


class TokenUsage(models.Model):
    """Gateway use per key, deployment and UTC day, written by the gateway's buffered flush (never per request)."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="token_usage")
    api_key = models.ForeignKey("access.ApiKey", on_delete=models.CASCADE, related_name="token_usage")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="token_usage")
    day = models.DateField()
    requests = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cancelled_requests = models.PositiveBigIntegerField(default=0, help_text="The client went away before the end")
    failed_requests = models.PositiveBigIntegerField(default=0, help_text="Upstream error or timeout")
    requests_without_user = models.PositiveBigIntegerField(
        default=0, help_text="Requests that named no user (no `user` field, header or key default): not in MAU")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-day", "api_key_id", "deployment_id"]
        constraints = [models.UniqueConstraint(fields=["api_key", "deployment", "day"], name="one_usage_row_per_key_day")]
        indexes = [models.Index(fields=["organisation", "day"])]

    def __str__(self) -> str:
        return f"{self.api_key_id}/{self.deployment_id}/{self.day}"
