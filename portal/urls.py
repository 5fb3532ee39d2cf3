"""The portal, mounted at the site root. /admin/, /api/v1/, /healthz and /v1/ belong to others."""

from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView

from portal import compliance_views, evidence, pool_views, views

app_name = "portal"


class Favicon(RedirectView):
    permanent = True

    def get_redirect_url(self, *args: object, **kwargs: object) -> str:
        return static("portal/favicon.svg")


urlpatterns = [
    path("", views.overview, name="overview"),
    # Browsers ask for /favicon.ico on pages that name no icon (the evidence report, the API's docs).
    # Resolved per request: at import the production manifest may not exist yet (manage.py check, collectstatic).
    path("favicon.ico", Favicon.as_view(), name="favicon"),
    path("login/", auth_views.LoginView.as_view(template_name="portal/login.html", redirect_authenticated_user=True),
         name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("groups/<int:pk>/", views.group_detail, name="group"),
    path("groups/<int:pk>/evaluate/", views.group_evaluate, name="group-evaluate"),
    path("groups/<int:pk>/evidence/", evidence.group_evidence, name="group-evidence"),
    path("groups/<int:pk>/declarations/", compliance_views.declaration_list, name="declarations"),
    path("groups/<int:pk>/grants/", compliance_views.grant_list, name="grants"),
    path("groups/<int:pk>/policy/", views.policy_edit, name="policy"),
    path("groups/<int:pk>/webhooks/", views.webhook_list, name="webhooks"),
    path("groups/<int:pk>/admins/", views.group_admin_appoint, name="group-admin-appoint"),
    path("groups/<int:pk>/admins/<int:admin_pk>/remove/", views.group_admin_remove, name="group-admin-remove"),
    path("groups/<int:pk>/management/", views.group_management, name="group-management"),
    path("products/", views.product_list, name="products"),
    path("products/new/", views.product_create, name="product-create"),
    path("products/<int:pk>/", views.product_detail, name="product"),
    path("products/<int:pk>/edit/", views.product_edit, name="product-edit"),
    path("products/<int:pk>/accept/", views.product_accept, name="product-accept"),
    path("products/<int:pk>/notice/", views.product_notice, name="product-notice"),
    path("organisations/<int:pk>/", views.organisation_detail, name="organisation"),
    path("organisations/<int:pk>/domicile/", views.organisation_domicile, name="organisation-domicile"),
    path("organisations/<int:pk>/exemption/", views.organisation_exemption, name="organisation-exemption"),
    path("organisations/<int:pk>/exemption/withdraw/", views.organisation_exemption_withdraw,
         name="organisation-exemption-withdraw"),
    path("alerts/", views.alert_list, name="alerts"),
    path("alerts/<int:pk>/acknowledge/", views.alert_acknowledge, name="alert-acknowledge"),
    path("webhooks/<int:pk>/", views.webhook_detail, name="webhook"),
    path("webhooks/<int:pk>/test/", views.webhook_test, name="webhook-test"),
    path("webhooks/<int:pk>/toggle/", views.webhook_toggle, name="webhook-toggle"),
    path("webhooks/<int:pk>/delete/", views.webhook_delete, name="webhook-delete"),
    path("deployments/", views.deployment_list, name="deployments"),
    path("deployments/new/", views.deployment_create, name="deployment-create"),
    path("deployments/<int:pk>/", views.deployment_detail, name="deployment"),
    path("deployments/<int:pk>/status/", pool_views.deployment_status, name="deployment-status"),
    path("deployments/<int:pk>/replicas/<int:replica_pk>/log/", pool_views.replica_log, name="replica-log"),
    path("deployments/quotas/", pool_views.quota_list, name="quotas"),
    path("deployments/usage/", pool_views.usage, name="usage"),
    path("deployments/<int:pk>/scale/", views.deployment_scale, name="deployment-scale"),
    path("deployments/<int:pk>/delete/", views.deployment_delete, name="deployment-delete"),
    path("keys/", views.key_list, name="keys"),
    path("keys/<int:pk>/revoke/", views.key_revoke, name="key-revoke"),
    path("audit/", views.audit_list, name="audit"),
    path("members/", views.member_list, name="members"),
    path("members/<int:pk>/role/", views.member_role, name="member-role"),
    path("members/<int:pk>/remove/", views.member_remove, name="member-remove"),
    path("members/invitations/<int:pk>/revoke/", views.invitation_revoke, name="invitation-revoke"),
    path("invitation/", views.invitation_detail, name="invitation"),
    path("invitation/signup/", views.invitation_signup, name="invitation-signup"),
    path("invitations/<str:token>/", views.invitation_link, name="invitation-link"),
]
