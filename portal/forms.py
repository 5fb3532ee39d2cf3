"""The portal's forms. They check the shape of the input; the rules belong to the services, whose
``ValidationError`` is put back next to the field it names (``add_service_errors``)."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from access.models import AffiliateGroup, Membership, Organisation, Scope
from governance.models import CountingBasis, GroupPolicy, OnUnknown
from inference.models import Deployment
from inference.services import DTYPES, QUANTIZATIONS
from licensing import selectors as licensing_selectors
from licensing.models import MetaGrant, Product


class DateInput(forms.DateInput):
    """A browser date picker. Its value must be ISO (``YYYY-MM-DD``): a localised ``16/10/2023`` shows as empty,
    and saving the form unchanged would erase the date. Every date field of the portal uses this widget."""

    input_type = "date"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs=attrs, format="%Y-%m-%d")


def add_service_errors(form: forms.Form, exc: ValidationError | ValueError) -> None:
    """Attach a service's refusal to the fields it names; anything else becomes a form-wide error."""
    if isinstance(exc, ValidationError) and hasattr(exc, "error_dict"):
        for field, messages in exc.message_dict.items():
            target = field if field in form.fields else None
            for message in messages:
                form.add_error(target, message if target else f"{field.replace('_', ' ')}: {message}")
        return
    messages = exc.messages if isinstance(exc, ValidationError) else [str(exc)]
    for message in messages:
        form.add_error(None, message)


class OrganisationChoiceMixin:
    """An ``organisation`` field limited to the organisations given, hidden when there is only one."""

    fields: dict[str, Any]

    def limit_organisations(self, organisations: QuerySet[Organisation]) -> None:
        field = self.fields["organisation"]
        field.queryset = organisations
        if organisations.count() == 1:
            field.initial = organisations.first()
            field.widget = forms.HiddenInput()


class ProductForm(OrganisationChoiceMixin, forms.Form):
    organisation = forms.ModelChoiceField(queryset=Organisation.objects.none(), empty_label=None)
    name = forms.CharField(max_length=200)
    licence_version = forms.ModelChoiceField(
        queryset=licensing_selectors.catalogue_licence_versions(), label="Llama licence version", required=False,
        empty_label="Not built on Llama",
        help_text="The licence the product is built under. A product or service not built on Llama is metered and "
                  "counted all the same: the 700M limit counts all the products and services of the organisation "
                  "and its affiliates.")
    base_model = forms.ModelChoiceField(queryset=licensing_selectors.catalogue_base_models(), required=False,
                                        help_text="Must be released under the licence version chosen (none for a "
                                                  "product not built on Llama).")
    status = forms.ChoiceField(choices=Product.Status.choices, initial=Product.Status.DEVELOPMENT)
    launch_date = forms.DateField(required=False, widget=DateInput())
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))

    def __init__(self, *args: Any, organisations: QuerySet[Organisation] | None = None, editing: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if editing:
            del self.fields["organisation"]
        else:
            self.limit_organisations(organisations if organisations is not None else Organisation.objects.none())


class AcceptanceForm(forms.Form):
    """Accepting a version's licence and AUP. The hash and AUP version are those the page showed: if the
    catalogue changed since, the service refuses rather than record words the person did not see."""

    licence_sha256 = forms.CharField(widget=forms.HiddenInput(), max_length=64)
    aup_version = forms.CharField(widget=forms.HiddenInput(), max_length=40)
    aup_sha256 = forms.CharField(widget=forms.HiddenInput(), max_length=64, required=False)
    confirm = forms.BooleanField(
        label="I have read and accept the licence and its Acceptable Use Policy on behalf of the organisation.",
        error_messages={"required": "Tick the box to confirm you accept the licence and the policy."},
    )
    note = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}),
                           help_text="Optional: e.g. the approval reference from counsel.")


class DomicileForm(forms.Form):
    eu_domiciled = forms.BooleanField(
        required=False, label="Principal place of business in the European Union",
        help_text="The Llama 3.2, 3.3 and 4 Acceptable Use Policies do not grant their multimodal models to a company "
                  "whose principal place of business is in the EU: ticking this drains its deployments of such "
                  "models at once.")


class ExemptionForm(forms.Form):
    supplier = forms.CharField(max_length=200, label="Supplier",
                               help_text="The licensee whose integrated end user product includes Llama.")
    evidence = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}),
                               help_text="What shows the organisation receives Llama only as part of that product: "
                                         "the agreement, the product, the supplier's confirmation.")


class ApiKeyForm(OrganisationChoiceMixin, forms.Form):
    organisation = forms.ModelChoiceField(queryset=Organisation.objects.none(), empty_label=None)
    name = forms.CharField(max_length=200, help_text="What the key is for, e.g. the service that uses it.")
    scopes = forms.MultipleChoiceField(choices=Scope.choices, widget=forms.CheckboxSelectMultiple,
                                       help_text="A key can hold only scopes your role holds.")
    product = forms.ModelChoiceField(queryset=Product.objects.none(), required=False,
                                     empty_label="Any product of the organisation",
                                     help_text="Bind the key to one product.")
    expires_on = forms.DateField(required=False, widget=DateInput(),
                                 help_text="Optional: the key stops working at the start of this day (UTC).")

    def __init__(self, *args: Any, organisations: QuerySet[Organisation], scopes: frozenset[str],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_organisations(organisations)
        self.fields["scopes"].choices = [(value, label) for value, label in Scope.choices if value in scopes]
        self.fields["product"].queryset = licensing_selectors.product_list(organisations=organisations)

    def clean_expires_on(self) -> dt.datetime | None:
        day = self.cleaned_data.get("expires_on")
        if day is None:
            return None
        if day <= dt.date.today():
            raise ValidationError("Choose a day after today.")
        return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)

    def clean(self) -> dict[str, Any]:
        super().clean()  # forms.Form's returns cleaned_data, which the stubs type as optional
        data = self.cleaned_data
        product, organisation = data.get("product"), data.get("organisation")
        if product is not None and organisation is not None and product.organisation_id != organisation.pk:
            self.add_error("product", "This product belongs to another organisation.")
        return data


def _percent_list(value: str) -> list[float]:
    try:
        return [float(part.strip().rstrip("%")) / 100 for part in value.replace(";", ",").split(",") if part.strip()]
    except ValueError as exc:
        raise ValidationError("Percentages separated by commas, e.g. 50, 75, 90.") from exc


class PolicyForm(forms.Form):
    """The group's alert and enforcement policy. The API's PolicySerializer checks it (see views)."""

    mode = forms.ChoiceField(choices=GroupPolicy.Mode.choices)
    grace_days = forms.IntegerField(min_value=0, max_value=365, help_text="Grace mode: days before blocking.")
    levels = forms.CharField(label="Alert levels (% of the threshold)", max_length=200,
                             help_text="Comma-separated, e.g. 50, 75, 90.")
    hysteresis = forms.FloatField(label="Hysteresis (%)", min_value=0, max_value=20,
                                  help_text="How far below a level the figure must fall to recover.")
    forecast_days = forms.IntegerField(min_value=1, max_value=730,
                                       help_text="Alert when the forecast crossing is this close.")
    email_enabled = forms.BooleanField(required=False, label="Send alerts by email")
    email_recipients = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}),
                                       help_text="One address per line.")
    webhooks_enabled = forms.BooleanField(required=False, label="Send alerts to webhooks")
    counting_basis = forms.ChoiceField(
        choices=CountingBasis.choices, label="Counting basis", required=False,
        help_text="The licence does not say how a person using two products counts; both are always shown.")
    on_unknown = forms.ChoiceField(
        choices=OnUnknown.choices, label="When a tested month has no figure", required=False,
        help_text="An alert asks for a declaration either way.")

    @classmethod
    def initial_for(cls, policy: GroupPolicy) -> dict[str, Any]:
        return {
            "mode": policy.mode, "grace_days": policy.grace_days,
            "levels": ", ".join(f"{level * 100:g}" for level in policy.levels),
            "hysteresis": round(policy.hysteresis * 100, 4), "forecast_days": policy.forecast_days,
            "email_enabled": policy.email_enabled, "email_recipients": "\n".join(policy.email_recipients),
            "webhooks_enabled": policy.webhooks_enabled, "counting_basis": policy.counting_basis,
            "on_unknown": policy.on_unknown,
        }

    def clean_levels(self) -> list[float]:
        return _percent_list(self.cleaned_data["levels"])

    def clean_email_recipients(self) -> list[str]:
        return [line.strip() for line in self.cleaned_data["email_recipients"].splitlines() if line.strip()]

    def as_policy_data(self) -> dict[str, Any]:
        data = {name: value for name, value in self.cleaned_data.items() if value != ""}  # omitted: unchanged
        data["hysteresis"] = data["hysteresis"] / 100
        return data


class WebhookForm(forms.Form):
    url = forms.URLField(max_length=500, label="URL", assume_scheme="https",
                         help_text="HTTPS; Corral signs every event with the secret shown once after saving.")
    description = forms.CharField(max_length=200, required=False)
    slack_format = forms.BooleanField(required=False, label="Slack-compatible payload")


class DeploymentForm(OrganisationChoiceMixin, forms.Form):
    organisation = forms.ModelChoiceField(queryset=Organisation.objects.none(), empty_label=None)
    product = forms.ModelChoiceField(queryset=Product.objects.none(),
                                     help_text="The product the deployment serves; its licence must be accepted.")
    base_model = forms.ModelChoiceField(queryset=licensing_selectors.catalogue_base_models())
    served_model_name = forms.CharField(max_length=100, help_text="The model name clients send to /v1/.")
    device = forms.ChoiceField(choices=Deployment.Device.choices, initial=Deployment.Device.GPU)
    replicas = forms.IntegerField(min_value=1, max_value=16, initial=1)
    tensor_parallel_size = forms.IntegerField(min_value=1, max_value=8, initial=1, label="GPUs per replica")
    max_model_len = forms.IntegerField(min_value=16, max_value=1_048_576, initial=4096, label="Context length")
    dtype = forms.ChoiceField(choices=[(d, d) for d in sorted(DTYPES)], initial="auto")
    quantization = forms.ChoiceField(choices=[(q, q or "none") for q in sorted(QUANTIZATIONS)], required=False)
    model_source = forms.CharField(max_length=500, required=False,
                                   help_text="Defaults to the base model's repository id.")

    def __init__(self, *args: Any, organisations: QuerySet[Organisation], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_organisations(organisations)
        # A deployment serves a Llama model: only products built on Llama can have one.
        self.fields["product"].queryset = licensing_selectors.product_list(organisations=organisations,
                                                                           built_on_llama=True)

    def clean(self) -> dict[str, Any]:
        super().clean()  # forms.Form's returns cleaned_data, which the stubs type as optional
        data = self.cleaned_data
        product, organisation = data.get("product"), data.get("organisation")
        if product is not None and organisation is not None and product.organisation_id != organisation.pk:
            self.add_error("product", "This product belongs to another organisation.")
        return data


class ScaleForm(forms.Form):
    replicas = forms.IntegerField(min_value=0, max_value=16)


class AuditFilterForm(forms.Form):
    group: forms.ModelChoiceField[AffiliateGroup] = forms.ModelChoiceField(queryset=None, required=False,
                                                                           empty_label="All groups")
    action = forms.CharField(required=False, max_length=80)
    actor = forms.CharField(required=False, max_length=200)
    since = forms.DateField(required=False, widget=DateInput(), label="From")
    until = forms.DateField(required=False, widget=DateInput(), label="To")

    def __init__(self, *args: Any, groups: QuerySet[AffiliateGroup], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast("forms.ModelChoiceField[AffiliateGroup]", self.fields["group"]).queryset = groups

    def clean(self) -> dict[str, Any]:
        super().clean()  # forms.Form's returns cleaned_data, which the stubs type as optional
        data = self.cleaned_data
        if data.get("since") and data.get("until") and data["until"] < data["since"]:
            self.add_error("until", "Must not be before the start.")
        return data


class InvitationForm(OrganisationChoiceMixin, forms.Form):
    organisation = forms.ModelChoiceField(queryset=Organisation.objects.none(), empty_label=None)
    email = forms.EmailField(help_text="Corral sends the link here (when it has a mail server) and shows it to you "
                                       "once. Whoever opens it joins with their own account or a new one.")
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER,
                             help_text="viewer: read; member: products and keys; admin: policies, webhooks, "
                                       "members; owner: everything, including owners. At most your own role.")

    def __init__(self, *args: Any, organisations: QuerySet[Organisation], roles: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_organisations(organisations)
        self.fields["role"].choices = [(value, label) for value, label in Membership.Role.choices if value in roles]


class InvitationSignupForm(forms.Form):
    """A new account for the holder of an invitation link; its email address is the invitation's."""

    username = forms.CharField(max_length=150, widget=forms.TextInput(attrs={"autocomplete": "username"}),
                               help_text="What you will log in with.")
    password = forms.CharField(strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
                               help_text="At least 8 characters, not only digits, not a common password.")
    password_again = forms.CharField(label="Password again", strip=False,
                                     widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))

    def clean(self) -> dict[str, Any]:
        super().clean()  # forms.Form's returns cleaned_data, which the stubs type as optional
        data = self.cleaned_data
        if data.get("password") and data.get("password_again") and data["password"] != data["password_again"]:
            self.add_error("password_again", "The two passwords differ.")
        return data


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


class MonthInput(forms.DateInput):
    """A browser month picker; its value is ``YYYY-MM``, the API's month."""

    input_type = "month"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs=attrs, format="%Y-%m")


class DeclarationForm(forms.Form):
    """A group MAU figure for a month, as the API's DeclaredFigureSerializer takes it; the service checks it."""

    month = forms.DateField(input_formats=["%Y-%m"], widget=MonthInput(),
                            help_text="The calendar month the figure counts (YYYY-MM), not in the future.")
    mau = forms.IntegerField(min_value=0, max_value=10**12, label="Monthly active users",
                             help_text="The group's figure for the month, all products and affiliates.")
    lower = forms.IntegerField(min_value=0, max_value=10**12, required=False, label="Lower bound",
                               help_text="Optional: leave both bounds empty for an exact figure.")
    upper = forms.IntegerField(min_value=0, max_value=10**12, required=False, label="Upper bound")
    evidence = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=5000,
                               help_text="Where the figure comes from: the report, the system, its reference.")

    def clean(self) -> dict[str, Any]:
        super().clean()  # forms.Form's returns cleaned_data, which the stubs type as optional
        data = self.cleaned_data
        lower, upper = data.get("lower"), data.get("upper")
        if lower is not None and upper is not None and lower > upper:
            self.add_error("lower", f"Must be at most the upper bound ({upper:,}); got {lower:,}.")
        return data


class ProposalForm(forms.Form):
    """A figure an organisation admin proposes for the group (the API's /declaration-proposals/); it counts once a
    group admin confirms it."""

    organisation = forms.ModelChoiceField(queryset=Organisation.objects.none(), empty_label=None,
                                          help_text="The organisation proposing the figure.")
    month = forms.DateField(input_formats=["%Y-%m"], widget=MonthInput(),
                            help_text="The calendar month the figure counts (YYYY-MM), not in the future.")
    mau = forms.IntegerField(min_value=0, max_value=10**12, label="Monthly active users",
                             help_text="The group's figure for the month, all products and affiliates.")
    evidence = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=5000,
                               help_text="Where the figure comes from: the report, the system, its reference.")

    def __init__(self, *args: Any, organisations: QuerySet[Organisation], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast("forms.ModelChoiceField[Organisation]", self.fields["organisation"]).queryset = organisations


class GrantForm(forms.Form):
    """A licence Meta granted, or the withdrawal of one, as the API's GrantSerializer takes it."""

    licence_versions = forms.ModelMultipleChoiceField(
        queryset=licensing_selectors.catalogue_licence_versions(), widget=forms.CheckboxSelectMultiple,
        label="Licence versions covered")
    reference = forms.CharField(max_length=200, help_text="Meta's reference or the agreement's title.")
    scope = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                            help_text="What the grant covers, in its own words.")
    granted_on = forms.DateField(widget=DateInput())
    valid_from = forms.DateField(widget=DateInput())
    valid_until = forms.DateField(required=False, widget=DateInput(), help_text="Empty: no end date.")
    supersedes: forms.ModelChoiceField[MetaGrant] = forms.ModelChoiceField(
        queryset=None, required=False, empty_label="None: a new grant",
        help_text="To correct a grant, record it again superseding the old one.")
    revoked = forms.BooleanField(required=False, label="This record withdraws the grant it supersedes")

    def __init__(self, *args: Any, grants: QuerySet[MetaGrant], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast("forms.ModelChoiceField[MetaGrant]", self.fields["supersedes"]).queryset = grants


class QuotaForm(forms.Form):
    max_gpus = forms.IntegerField(min_value=0, max_value=100_000, label="GPUs")
    max_cpu_replicas = forms.IntegerField(min_value=0, max_value=100_000, label="CPU replicas")
