from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Corral portal"

    def ready(self) -> None:
        from axes.signals import user_locked_out

        from portal.login import audit_lockout

        user_locked_out.connect(audit_lockout, dispatch_uid="portal.login.audit_lockout")
