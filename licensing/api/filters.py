import django_filters

from licensing.models import AffiliateGroup, LicenceAcceptance, LicenceVersion, MetaGrant, Organisation, Product


class LicenceVersionFilter(django_filters.FilterSet):
    released_after = django_filters.DateFilter(field_name="release_date", lookup_expr="gte")
    released_before = django_filters.DateFilter(field_name="release_date", lookup_expr="lte")

    class Meta:
        model = LicenceVersion
        fields = ["slug", "date_ambiguous", "eu_multimodal_restriction"]


class GroupFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = AffiliateGroup
        fields = ["name"]


class OrganisationFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Organisation
        fields = ["name", "status", "group"]


class ProductFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")
    licence_version = django_filters.CharFilter(field_name="licence_version__slug")
    built_on_llama = django_filters.BooleanFilter(field_name="licence_version", lookup_expr="isnull", exclude=True,
                                                  label="true: products built on Llama; false: the others")
    launched_after = django_filters.DateFilter(field_name="launch_date", lookup_expr="gte")
    launched_before = django_filters.DateFilter(field_name="launch_date", lookup_expr="lte")

    class Meta:
        model = Product
        fields = ["name", "status", "organisation", "licence_version", "built_on_llama"]


class AcceptanceFilter(django_filters.FilterSet):
    licence_version = django_filters.CharFilter(field_name="licence_version__slug")
    accepted_after = django_filters.IsoDateTimeFilter(field_name="accepted_at", lookup_expr="gte")

    class Meta:
        model = LicenceAcceptance
        fields = ["organisation", "product", "licence_version", "aup_version"]


class GrantFilter(django_filters.FilterSet):
    licence_version = django_filters.CharFilter(field_name="licence_versions__slug")

    class Meta:
        model = MetaGrant
        fields = ["group", "revoked", "licence_version"]
