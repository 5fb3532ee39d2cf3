"""What a licence version obliges a product to do, as pure functions over its terms.

Each function reads like the clause it encodes (section numbers are those of the Llama community
licences); none touches the database, so every version's obligations are tested without one.
"""

from __future__ import annotations

from dataclasses import dataclass

from licensing.terms import LicenceTerms

NOTICE_FILENAME = "NOTICE"


def notice_file_text(terms: LicenceTerms) -> str:
    """The "Notice" text file a redistributor ships (section 1.b.iii): the licence's own Notice line."""
    return terms.notice_line.rstrip() + "\n"


def attribution_required(terms: LicenceTerms) -> str | None:
    """The phrase a product or service using the materials must display prominently, or None (Llama 2)."""
    return terms.attribution_display or None


@dataclass(frozen=True)
class NameCheck:
    name: str
    ok: bool
    rule: str
    message: str


def check_derived_model_name(terms: LicenceTerms, name: str) -> NameCheck:
    """Whether a distributed model created or improved with the materials is named as the licence asks.

    Llama 3 asks for names that begin with "Llama 3"; 3.1 and later for names that begin with "Llama";
    Llama 2 and Code Llama set no naming rule.
    """
    cleaned = name.strip()
    prefix = terms.derived_name_prefix
    if not cleaned:
        return NameCheck(name=name, ok=False, rule="non_empty", message="A model name must not be empty.")
    if not prefix:
        return NameCheck(
            name=cleaned,
            ok=True,
            rule="no_naming_rule",
            message=f"{terms.version} sets no naming rule for derived models.",
        )
    # The licence asks for the prefix "at the beginning" of the name. Separators count as spaces, and the
    # prefix must end on a word boundary: "Llama3.1-8B" begins with "Llama", "Llama 30B" does not begin with
    # "Llama 3", and "Llamafied" does not begin with the word "Llama".
    normalised = cleaned.replace("-", " ").replace("_", " ")
    if normalised.startswith(prefix) and _ends_on_boundary(prefix, normalised[len(prefix):]):
        return NameCheck(
            name=cleaned, ok=True, rule="name_prefix", message=f'The name begins with "{prefix}" as required.'
        )
    return NameCheck(
        name=cleaned,
        ok=False,
        rule="name_prefix",
        message=f'{terms.version} requires a distributed derived model\'s name to begin with "{prefix}".',
    )


def _ends_on_boundary(prefix: str, rest: str) -> bool:
    if not rest:
        return True
    last, following = prefix[-1], rest[0]
    if last.isalpha():
        return not following.isalpha()
    if last.isdigit():
        return not following.isdigit()
    return True


@dataclass(frozen=True)
class Obligations:
    version: str
    notice_filename: str
    notice_text: str
    attribution_display: str | None
    derived_name_prefix: str | None
    outputs_may_improve_other_models: bool
    eu_multimodal_restriction: bool
    redistribute_licence_copy: bool
    aup_version: str
    aup_url: str
    aup_accepted: bool
    licence_accepted: bool
    date_ambiguous: bool


def product_obligations(
    terms: LicenceTerms, *, licence_accepted: bool, aup_accepted: bool
) -> Obligations:
    """Every obligation a product built on ``terms`` carries, with whether the licence and AUP are accepted."""
    return Obligations(
        version=terms.version,
        notice_filename=NOTICE_FILENAME,
        notice_text=notice_file_text(terms),
        attribution_display=attribution_required(terms),
        derived_name_prefix=terms.derived_name_prefix or None,
        outputs_may_improve_other_models=terms.outputs_may_improve_other_models,
        eu_multimodal_restriction=terms.eu_multimodal_restriction,
        redistribute_licence_copy=True,
        aup_version=terms.aup_version,
        aup_url=terms.aup_url,
        aup_accepted=aup_accepted,
        licence_accepted=licence_accepted,
        date_ambiguous=terms.date_ambiguous,
    )
