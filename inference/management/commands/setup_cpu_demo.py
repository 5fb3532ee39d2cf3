import subprocess
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from access.models import Organisation
from inference.models import GpuQuota, Node
from licensing.models import BaseModel, LicenceVersion

DEMO_REPO_ID = "corral/tiny-llama-demo"


class Command(BaseCommand):
    help = ("Let this machine serve deployments without a GPU: build the tiny demo model, register this host as "
            "a CPU node and give the demo organisations a CPU quota. Needs `make engine` first.")

    def handle(self, *args: Any, **options: Any) -> None:
        python = settings.BASE_DIR / ".venv-vllm" / "bin" / "python"
        if not python.exists():
            raise CommandError("The CPU engine is not installed: run `make engine` first.")
        # Works on a fresh machine before the first `make run`: the schema, the catalogue and the demo tenant.
        call_command("migrate", verbosity=0)
        call_command("load_demo", stdout=self.stdout)
        model_dir = Path(settings.VAR_DIR) / "models" / "tiny-llama"
        subprocess.run([str(python), str(settings.BASE_DIR / "inference" / "engine" / "tiny_model.py"),
                        str(model_dir)], check=True)
        node, _ = Node.objects.get_or_create(name="this-host", defaults={
            "address": "127.0.0.1", "cpu_only": True, "cpu_slots": 1})
        version = LicenceVersion.objects.get(slug="llama-3.1")
        # A catalogue entry for the demo's random-weight model, so a deployment of it is checked like any other.
        BaseModel.objects.get_or_create(repo_id=DEMO_REPO_ID, defaults={"licence_version": version})
        for organisation in Organisation.objects.filter(group__name="Acme Holdings"):
            GpuQuota.objects.update_or_create(organisation=organisation, defaults={"max_cpu_replicas": 1})
        self.stdout.write(f"CPU node {node.name!r} ready; demo model in {model_dir}; base model {DEMO_REPO_ID}.")
        self.stdout.write(
            "Request a deployment (with a key of acme-social that has read and write):\n"
            "  curl -X POST http://127.0.0.1:8000/api/v1/deployments/ -H \"Authorization: Bearer $KEY\" "
            "-H 'Content-Type: application/json' -d '{\"product\": <Acme Chat id>, \"base_model\": "
            f"\"{DEMO_REPO_ID}\", \"model_source\": \"{model_dir}\", \"served_model_name\": \"tiny\", "
            "\"device\": \"cpu\", \"dtype\": \"float32\", \"max_model_len\": 256, \"extra_args\": [\"--enforce-eager\"]}'"
        )
