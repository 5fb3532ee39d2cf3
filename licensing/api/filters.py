import django_filters

from access.models import AffiliateGroup, Organisation
from config.filters import BooleanFilter, DateFilter, DateTimeFilter, FilterSet
from licensing.models import LicenceAcceptance, LicenceVersion, MetaGrant, Product


class LicenceVersionFilter(FilterSet):
    released_after = DateFilter(field_name="release_date", lookup_expr="gte")
    released_before = DateFilter(field_name="release_date", lookup_expr="lte")

    class Meta:
        model = LicenceVersion
        fields = ["slug", "date_ambiguous", "eu_multimodal_restriction"]


class GroupFilter(FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = AffiliateGroup
        fields = ["name"]


class OrganisationFilter(FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Organisation
        fields = ["name", "status", "group"]


class ProductFilter(FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")
    licence_version = django_filters.CharFilter(field_name="licence_version__slug")
    built_on_llama = BooleanFilter(field_name="licence_version", lookup_expr="isnull", exclude=True,
                                   label="true: products built on Llama; false: the others")
    launched_after = DateFilter(field_name="launch_date", lookup_expr="gte")
    launched_before = DateFilter(field_name="launch_date", lookup_expr="lte")

    class Meta:
        model = Product
        fields = ["name", "status", "organisation", "licence_version", "built_on_llama"]


class AcceptanceFilter(FilterSet):
    licence_version = django_filters.CharFilter(field_name="licence_version__slug")
    accepted_after = DateTimeFilter(field_name="accepted_at", lookup_expr="gte")

    class Meta:
        model = LicenceAcceptance
        fields = ["organisation", "product", "licence_version", "aup_version"]


class GrantFilter(FilterSet):
    licence_version = django_filters.CharFilter(field_name="licence_versions__slug")

    class Meta:
        model = MetaGrant
        fields = ["group", "revoked", "licence_version"]
