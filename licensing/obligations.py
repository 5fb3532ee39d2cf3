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


MADE_WITH = ("materials", "outputs")


def derived_name_rule(terms: LicenceTerms) -> str | None:
    """The naming obligation of section 1.b.i in words, or None where the version sets none (Llama 2, Code Llama).

    Llama 3.1 and later reach a model made with the Llama Materials "or any outputs or results" of them; Llama 3
    names the Llama Materials only.
    """
    if not terms.derived_name_prefix:
        return None
    made_with = "the Llama Materials or any outputs or results of them" if terms.derived_name_covers_outputs \
        else "the Llama Materials"
    return (f"A model created, trained, fine tuned or otherwise improved with {made_with}, and distributed or made "
            f'available, must have a name beginning with "{terms.derived_name_prefix}" (section 1.b.i).')


def derived_name_outputs_reading(terms: LicenceTerms) -> str:
    """How Corral reads the naming clause for a model made from outputs only, where the clause does not say.

    Empty where the text decides: 3.1 and later name outputs, and Llama 2 and Code Llama set no naming rule.
    """
    if not terms.derived_name_prefix or terms.derived_name_covers_outputs:
        return ""
    return (f"{terms.version}'s naming clause names the Llama Materials, not their outputs. Corral applies it to a "
            f"model made from outputs as well: the licence lets outputs improve no other large language model than "
            f"{terms.version} or its derivative works (section 1.b.v), and such a model is made with the Llama "
            f"Materials.")


@dataclass(frozen=True)
class NameCheck:
    name: str
    ok: bool
    rule: str
    message: str
    reading: str = ""  # the reading Corral used where the licence text does not decide; empty where it does


def check_derived_model_name(terms: LicenceTerms, name: str, *, made_with: str = "materials") -> NameCheck:
    """Whether a model made with the materials (``made_with="materials"``) or with their outputs or results only
    (``"outputs"``), and distributed or made available, is named as section 1.b.i asks.

    Llama 3.1 and later: the name must begin with "Llama", whether the model was made with the materials or with
    their outputs. Llama 3: it must begin with "Llama 3"; the clause names the materials only, and for a model
    made from outputs the check applies it too and says so in ``reading``. Llama 2 and Code Llama set no rule.
    The clause covers only a model that is distributed or made available: the check answers for such a model.
    """
    if made_with not in MADE_WITH:
        raise ValueError(f"made_with must be one of {', '.join(MADE_WITH)}, not {made_with!r}.")
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
    reading = derived_name_outputs_reading(terms) if made_with == "outputs" else ""
    # The licence asks for the prefix "at the beginning" of the name. Separators count as spaces, and the
    # prefix must end on a word boundary: "Llama3.1-8B" begins with "Llama", "Llama 30B" does not begin with
    # "Llama 3", and "Llamafied" does not begin with the word "Llama".
    normalised = cleaned.replace("-", " ").replace("_", " ")
    if normalised.startswith(prefix) and _ends_on_boundary(prefix, normalised[len(prefix):]):
        return NameCheck(name=cleaned, ok=True, rule="name_prefix", reading=reading,
                         message=f'The name begins with "{prefix}" as required. {derived_name_rule(terms)}')
    return NameCheck(name=cleaned, ok=False, rule="name_prefix", reading=reading,
                     message=f"{terms.version}: {derived_name_rule(terms)}")


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
    derived_name_covers_outputs: bool
    derived_name_rule: str | None
    derived_name_reading: str
    outputs_may_improve_other_models: bool
    eu_multimodal_restriction: bool
    redistribute_licence_copy: bool
    aup_version: str
    aup_url: str
    aup_accepted: bool
    licence_accepted: bool
    date_ambiguous: bool
    licence_required: str  # what must be accepted, and why, while the licence is not; else empty
    aup_required: str


def product_obligations(
    terms: LicenceTerms, *, licence_accepted: bool, aup_accepted: bool, licence_required: str = "",
    aup_required: str = "",
) -> Obligations:
    """Every obligation a product built on ``terms`` carries, with whether the licence and AUP are accepted."""
    return Obligations(
        version=terms.version,
        notice_filename=NOTICE_FILENAME,
        notice_text=notice_file_text(terms),
        attribution_display=attribution_required(terms),
        derived_name_prefix=terms.derived_name_prefix or None,
        derived_name_covers_outputs=terms.derived_name_covers_outputs,
        derived_name_rule=derived_name_rule(terms),
        derived_name_reading=derived_name_outputs_reading(terms),
        outputs_may_improve_other_models=terms.outputs_may_improve_other_models,
        eu_multimodal_restriction=terms.eu_multimodal_restriction,
        redistribute_licence_copy=True,
        aup_version=terms.aup_version,
        aup_url=terms.aup_url,
        aup_accepted=aup_accepted,
        licence_accepted=licence_accepted,
        date_ambiguous=terms.date_ambiguous,
        licence_required=licence_required,
        aup_required=aup_required,
    )
