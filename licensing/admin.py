from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest

from access.audit import audit_record
from access.models import AffiliateGroup, GroupAdmin, Invitation, Membership, Organisation
from licensing.models import BaseModel, Exemption, LicenceAcceptance, LicenceVersion, MetaGrant, Product
from licensing.services import organisation_domicile_set, product_check


class BaseModelInline(admin.TabularInline):
    model = BaseModel
    extra = 0


@admin.register(LicenceVersion)
class LicenceVersionAdmin(admin.ModelAdmin):
    list_display = ["name", "release_date", "date_ambiguous", "mau_threshold", "attribution_display", "aup_version"]
    search_fields = ["name", "slug", "licence_name"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [BaseModelInline]


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ["repo_id", "licence_version", "multimodal"]
    list_filter = ["licence_version", "multimodal"]
    search_fields = ["repo_id"]


class OrganisationInline(admin.TabularInline):
    model = Organisation
    extra = 0
    fields = ["name", "slug", "status"]
    show_change_link = True


class GroupAdminInline(admin.TabularInline):
    model = GroupAdmin
    extra = 0
    autocomplete_fields = ["user"]
    readonly_fields = ["appointed_by", "appointed_at"]


@admin.register(AffiliateGroup)
class AffiliateGroupAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "managing_organisation", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [OrganisationInline, GroupAdminInline]

    def save_formset(self, request: HttpRequest, form: forms.ModelForm[AffiliateGroup],
                     formset: BaseInlineFormSet[models.Model, AffiliateGroup, forms.ModelForm[models.Model]],
                     change: bool) -> None:
        for instance in formset.save(commit=False):
            if isinstance(instance, GroupAdmin) and not instance.appointed_by:
                instance.appointed_by = f"user:{request.user.get_username()}"
        super().save_formset(request, form, formset, change)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class ExemptionInline(admin.TabularInline):
    """Recorded and withdrawn through the API or the portal (audited), so only shown here."""

    model = Exemption
    extra = 0
    fields = readonly_fields = ("supplier", "evidence", "recorded_by", "recorded_at", "withdrawn_at", "withdrawn_by")
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Organisation | None = None) -> bool:
        return False


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    list_display = ["name", "group", "status", "eu_domiciled", "created_at"]
    list_filter = ["status", "group", "eu_domiciled"]
    search_fields = ["name", "slug", "group__name"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline, ExemptionInline]

    def save_model(self, request: HttpRequest, obj: Organisation, form: forms.ModelForm[Organisation],
                   change: bool) -> None:
        # A change of domicile goes through its service: audited, and a move into the EU drains the multimodal
        # deployments the AUP withholds from the organisation.
        if not (change and "eu_domiciled" in form.changed_data):
            super().save_model(request, obj, form, change)
            return
        eu_domiciled, obj.eu_domiciled = obj.eu_domiciled, form.initial["eu_domiciled"]
        super().save_model(request, obj, form, change)
        result = organisation_domicile_set(organisation=obj, eu_domiciled=eu_domiciled,
                                           actor=f"user:{request.user.get_username()}")
        if result.drained:
            self.message_user(request, f"Drained {len(result.drained)} deployment(s) of multimodal models the "
                                       f"AUP withholds from EU companies: "
                                       f"{', '.join(d.served_model_name for d in result.drained)}.",
                              level=messages.WARNING)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organisation", "role"]
    list_filter = ["role", "organisation"]
    search_fields = ["user__username", "user__email", "organisation__name"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Read only: invitations are created and revoked in the portal, which records both in the audit log (and
    shows the link once); a change here would not be recorded."""

    list_display = ["email", "organisation", "role", "created_by", "created_at", "expires_at", "accepted_at",
                    "revoked_at"]
    list_filter = ["role", "organisation"]
    search_fields = ["email", "organisation__name", "created_by"]
    exclude = ["token_hash"]
    readonly_fields = ["organisation", "email", "role", "selector", "created_by", "created_at", "expires_at",
                       "accepted_at", "accepted_by", "revoked_at", "revoked_by"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return False


class BuiltOnLlamaFilter(admin.SimpleListFilter):
    title = "built on Llama"
    parameter_name = "built_on_llama"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Product]) -> list[tuple[str, str]]:
        return [("yes", "Built on Llama"), ("no", "Not built on Llama")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Product]) -> QuerySet[Product]:
        if self.value() in ("yes", "no"):
            return queryset.filter(licence_version__isnull=self.value() == "no")
        return queryset


class ProductAdminForm(forms.ModelForm):
    class Meta:
        model = Product
        fields = "__all__"

    def clean(self) -> dict[str, Any]:
        super().clean()  # ModelForm's returns cleaned_data, which the stubs type as optional
        data = self.cleaned_data
        organisation = data.get("organisation") or getattr(self.instance, "organisation", None)
        if organisation is not None and not self.errors:
            # The services' rules (the base model of the version, the EU clause) hold here too.
            product_check(organisation=organisation, licence_version=data.get("licence_version"),
                          base_model=data.get("base_model"),
                          check_base_model="base_model" in self.changed_data or self.instance.pk is None)
        return data


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    form = ProductAdminForm
    list_display = ["name", "organisation", "llama_licence", "base_model", "status", "launch_date"]
    list_filter = ["status", BuiltOnLlamaFilter, "licence_version", "organisation"]
    search_fields = ["name", "organisation__name", "base_model__repo_id"]

    @admin.display(description="Llama licence", ordering="licence_version__release_date")
    def llama_licence(self, obj: Product) -> str:
        return obj.licence_version.name if obj.licence_version else "Not built on Llama"


class AppendOnlyAdmin(admin.ModelAdmin):
    """Append-only records: added here, never changed or deleted."""

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return obj is None

    def has_delete_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return False


@admin.register(LicenceAcceptance)
class LicenceAcceptanceAdmin(AppendOnlyAdmin):
    """Acceptances are recorded by the person accepting (API or portal), never on their behalf here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    list_display = ["organisation", "licence_version", "product", "accepted_by", "accepted_at", "aup_version"]
    list_filter = ["licence_version", "organisation"]
    search_fields = ["organisation__name", "accepted_by", "licence_sha256"]


@admin.register(MetaGrant)
class MetaGrantAdmin(AppendOnlyAdmin):
    list_display = ["reference", "group", "granted_on", "valid_from", "valid_until", "revoked", "recorded_by"]
    list_filter = ["revoked", "group"]
    search_fields = ["reference", "group__name", "scope"]
    exclude = ["recorded_by"]

    def save_model(self, request: HttpRequest, obj: MetaGrant, form: forms.ModelForm[MetaGrant],
                   change: bool) -> None:
        obj.recorded_by = f"user:{request.user.get_username()}"
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: forms.ModelForm[MetaGrant],
                     formsets: list[BaseInlineFormSet[models.Model, MetaGrant, forms.ModelForm[models.Model]]],
                     change: bool) -> None:
        super().save_related(request, form, formsets, change)
        grant = form.instance
        audit_record(
            action="grant.revoked" if grant.revoked else "grant.recorded",
            actor=grant.recorded_by,
            group=grant.group,
            obj=grant,
            data={"reference": grant.reference, "licence_versions": [v.slug for v in grant.licence_versions.all()]},
        )
