
from access.models import ApiKey
from config.filters import BooleanFilter, FilterSet


class ApiKeyFilter(FilterSet):
    active = BooleanFilter(method="filter_active")

    class Meta:
        model = ApiKey
        fields = ["organisation", "product", "prefix"]

    def filter_active(self, queryset, name, value):  # type: ignore[no-untyped-def]
        from django.db.models import Q
        from django.utils import timezone

        live = Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        return queryset.filter(live) if value else queryset.exclude(live)
