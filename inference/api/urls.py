from rest_framework.routers import SimpleRouter

from inference.api import views

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("deployments", views.DeploymentViewSet, basename="deployment")
router.register("pool/nodes", views.StaffNodeViewSet, basename="pool-node")
router.register("pool/gpus", views.StaffGPUViewSet, basename="pool-gpu")
router.register("pool/quotas", views.StaffQuotaViewSet, basename="pool-quota")
router.register("pool/gateway-limits", views.StaffGatewayLimitViewSet, basename="pool-gateway-limit")
router.register("usage", views.UsageViewSet, basename="usage")
router.register("pool/deployments", views.StaffDeploymentViewSet, basename="pool-deployment")

urlpatterns = router.urls
