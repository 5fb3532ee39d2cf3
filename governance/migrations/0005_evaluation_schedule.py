"""The hourly evaluation as a django-celery-beat periodic task, so an admin can change it and it stays changed."""

from django.db import migrations


def create(apps, schema_editor):  # type: ignore[no-untyped-def]
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    hourly, _ = interval_model.objects.get_or_create(every=1, period="hours")
    task_model.objects.get_or_create(
        name="Evaluate every affiliate group",
        defaults={"task": "governance.tasks.evaluate_all_groups", "interval": hourly,
                  "description": "Statuses, access decisions, forecasts and alerts for every group. "
                                 "Groups are also evaluated seconds after new activity."},
    )


def remove(apps, schema_editor):  # type: ignore[no-untyped-def]
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name="Evaluate every affiliate group").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("governance", "0004_evaluation_alerts"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(create, remove)]
