from rest_framework.routers import SimpleRouter

from governance.api import views
from governance.compliance import api as compliance
from governance.metering import api as metering

router = SimpleRouter()
router.trailing_slash = "/?"  # accept URLs with and without the trailing slash
router.register("keys", views.ApiKeyViewSet, basename="api-key")
# Metering actions hang off the licensing resources: /products/{id}/activity, /groups/{id}/mau, ...
router.register("products", metering.ProductMeteringViewSet, basename="product-metering")
router.register("organisations", metering.OrganisationMeteringViewSet, basename="organisation-metering")
router.register("groups", metering.GroupMeteringViewSet, basename="group-metering")
router.register("groups", compliance.GroupComplianceViewSet, basename="group-compliance")
router.register("declaration-proposals", compliance.DeclarationProposalViewSet, basename="declaration-proposal")
router.register("alerts", compliance.AlertViewSet, basename="alert")
router.register("webhooks", compliance.WebhookEndpointViewSet, basename="webhook")
router.register("audit", compliance.AuditEventViewSet, basename="audit")

urlpatterns = router.urls
