from rest_framework.routers import DefaultRouter

from licensing.api import views

router = DefaultRouter()
router.trailing_slash = "/?"  # accept URLs with and without the trailing slash
router.register("licences", views.LicenceVersionViewSet, basename="licence")
router.register("groups", views.GroupViewSet, basename="group")
router.register("organisations", views.OrganisationViewSet, basename="organisation")
router.register("products", views.ProductViewSet, basename="product")
router.register("acceptances", views.AcceptanceViewSet, basename="acceptance")
router.register("grants", views.GrantViewSet, basename="grant")

urlpatterns = router.urls
