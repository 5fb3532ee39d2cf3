from rest_framework.routers import SimpleRouter

from governance.api import views

router = SimpleRouter(trailing_slash="/?")
router.register("keys", views.ApiKeyViewSet, basename="api-key")

urlpatterns = router.urls
