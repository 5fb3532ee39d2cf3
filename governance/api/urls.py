from rest_framework.routers import SimpleRouter

from governance.api import metering, views

router = SimpleRouter()
router.trailing_slash = "/?"  # accept URLs with and without the trailing slash
router.register("keys", views.ApiKeyViewSet, basename="api-key")
# Metering actions hang off the licensing resources: /products/{id}/activity, /groups/{id}/mau, ...
router.register("products", metering.ProductMeteringViewSet, basename="product-metering")
router.register("organisations", metering.OrganisationMeteringViewSet, basename="organisation-metering")
router.register("groups", metering.GroupMeteringViewSet, basename="group-metering")

urlpatterns = router.urls
