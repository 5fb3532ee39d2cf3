from django.contrib import admin

from governance.audit import audit_record

from licensing.models import (
    AffiliateGroup,
    BaseModel,
    GroupAdmin,
    Invitation,
    LicenceAcceptance,
    LicenceVersion,
    Membership,
    MetaGrant,
    Organisation,
    Product,
)


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

    def save_formset(self, request, form, formset, change):  # type: ignore[no-untyped-def]
        for instance in formset.save(commit=False):
            if isinstance(instance, GroupAdmin) and not instance.appointed_by:
                instance.appointed_by = f"user:{request.user.get_username()}"
        super().save_formset(request, form, formset, change)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    list_display = ["name", "group", "status", "eu_domiciled", "created_at"]
    list_filter = ["status", "group", "eu_domiciled"]
    search_fields = ["name", "slug", "group__name"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


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

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["name", "organisation", "licence_version", "base_model", "status", "launch_date"]
    list_filter = ["status", "licence_version", "organisation"]
    search_fields = ["name", "organisation__name", "base_model__repo_id"]


class AppendOnlyAdmin(admin.ModelAdmin):
    """Append-only records: added here, never changed or deleted."""

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return obj is None

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(LicenceAcceptance)
class LicenceAcceptanceAdmin(AppendOnlyAdmin):
    """Acceptances are recorded by the person accepting (API or portal), never on their behalf here."""

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
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

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        obj.recorded_by = f"user:{request.user.get_username()}"
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):  # type: ignore[no-untyped-def]
        super().save_related(request, form, formsets, change)
        grant = form.instance
        audit_record(
            action="grant.revoked" if grant.revoked else "grant.recorded",
            actor=grant.recorded_by,
            group=grant.group,
            obj=grant,
            data={"reference": grant.reference, "licence_versions": [v.slug for v in grant.licence_versions.all()]},
        )
