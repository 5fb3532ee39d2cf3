"""Every catalogue version's obligations, built from licensing/data/catalogue.json with no database."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from licensing.obligations import (
    NOTICE_FILENAME,
    attribution_required,
    check_derived_model_name,
    derived_name_rule,
    notice_file_text,
    product_obligations,
)
from licensing.terms import LicenceTerms

CATALOGUE_JSON = Path(__file__).resolve().parents[2] / "licensing" / "data" / "catalogue.json"
ALL_SLUGS = ["llama-2", "code-llama", "llama-3", "llama-3.1", "llama-3.2", "llama-3.3", "llama-4"]
LLAMA_3_1_AND_LATER = ["llama-3.1", "llama-3.2", "llama-3.3", "llama-4"]


def catalogue_entries() -> list[dict[str, Any]]:
    return json.loads(CATALOGUE_JSON.read_text(encoding="utf-8"))["versions"]


def terms_from_catalogue(slug: str) -> LicenceTerms:
    entry = next(entry for entry in catalogue_entries() if entry["slug"] == slug)
    values = {field.name: entry.get(field.name) for field in dataclasses.fields(LicenceTerms)}
    values["version"] = entry["name"]
    values["release_date"] = dt.date.fromisoformat(entry["release_date"])
    return LicenceTerms(**values)


def test_it_ships_exactly_the_seven_versions_these_tests_cover() -> None:
    assert [entry["slug"] for entry in catalogue_entries()] == ALL_SLUGS


@pytest.mark.parametrize(
    ("slug", "notice"),
    [
        (
            "llama-2",
            "Llama 2 is licensed under the LLAMA 2 Community License, "
            "Copyright (c) Meta Platforms, Inc. All Rights Reserved.\n",
        ),
        (
            "code-llama",
            "Llama 2 is licensed under the LLAMA 2 Community License, "
            "Copyright (c) Meta Platforms, Inc. All Rights Reserved.\n",
        ),
        (
            "llama-3",
            "Meta Llama 3 is licensed under the Meta Llama 3 Community License, "
            "Copyright © Meta Platforms, Inc. All Rights Reserved.\n",
        ),
        (
            "llama-3.1",
            "Llama 3.1 is licensed under the Llama 3.1 Community License, "
            "Copyright © Meta Platforms, Inc. All Rights Reserved.\n",
        ),
        (
            "llama-3.2",
            "Llama 3.2 is licensed under the Llama 3.2 Community License, "
            "Copyright © Meta Platforms, Inc. All Rights Reserved.\n",
        ),
        (
            "llama-3.3",
            "Llama 3.3 is licensed under the Llama 3.3 Community License, "
            "Copyright © Meta Platforms, Inc. All Rights Reserved.\n",
        ),
        (
            "llama-4",
            "Llama 4 is licensed under the Llama 4 Community License, "
            "Copyright © Meta Platforms, Inc. All Rights Reserved.\n",
        ),
    ],
)
def test_it_writes_each_versions_notice_file_word_for_word(slug: str, notice: str) -> None:
    terms = terms_from_catalogue(slug)

    assert notice_file_text(terms) == notice
    assert product_obligations(terms, licence_accepted=False, aup_accepted=False).notice_text == notice


def test_it_names_the_notice_file_notice() -> None:
    obligations = product_obligations(terms_from_catalogue("llama-3.1"), licence_accepted=True, aup_accepted=True)

    assert NOTICE_FILENAME == "NOTICE"
    assert obligations.notice_filename == "NOTICE"


def test_it_ends_the_notice_file_with_exactly_one_newline() -> None:
    terms = dataclasses.replace(terms_from_catalogue("llama-3.1"), notice_line="Llama 3.1 is licensed ...  \n\n")

    assert notice_file_text(terms) == "Llama 3.1 is licensed ...\n"


@pytest.mark.parametrize(
    ("slug", "attribution"),
    [
        ("llama-2", None),
        ("code-llama", None),
        ("llama-3", "Built with Meta Llama 3"),
        ("llama-3.1", "Built with Llama"),
        ("llama-3.2", "Built with Llama"),
        ("llama-3.3", "Built with Llama"),
        ("llama-4", "Built with Llama"),
    ],
)
def test_it_requires_the_attribution_each_version_asks_for(slug: str, attribution: str | None) -> None:
    terms = terms_from_catalogue(slug)

    assert attribution_required(terms) == attribution
    assert product_obligations(terms, licence_accepted=True, aup_accepted=True).attribution_display == attribution


@pytest.mark.parametrize(
    "name", ["Llama 3 Foo", "Llama-3-Foo", "Llama_3_Foo", "Llama 3", "Llama 3.1 Foo", " Llama 3 Foo "]
)
def test_it_accepts_llama_3_derived_names_that_begin_with_llama_3(name: str) -> None:
    check = check_derived_model_name(terms_from_catalogue("llama-3"), name)

    assert check.ok is True
    assert check.rule == "name_prefix"
    assert check.name == name.strip()


@pytest.mark.parametrize(
    "name",
    [
        "Llama Foo",  # "Llama" alone is the 3.1+ rule, not Llama 3's
        "MyLlama 3",
        "My Llama 3",
        "Foo Llama 3",
        "Llama3Foo",
        "Llama3 Foo",
        "Llama 30B-x",  # "Llama 30B" is not "Llama 3": the prefix must end on a word boundary
        "llama-3-foo",  # the comparison is case-sensitive
    ],
)
def test_it_refuses_llama_3_derived_names_that_do_not_begin_with_llama_3(name: str) -> None:
    check = check_derived_model_name(terms_from_catalogue("llama-3"), name)

    assert check.ok is False
    assert check.rule == "name_prefix"
    assert '"Llama 3"' in check.message


@pytest.mark.parametrize("slug", LLAMA_3_1_AND_LATER)
@pytest.mark.parametrize("name", ["Llama-Foo", "Llama Foo", "Llama_Foo", "Llama", "Llama 3.1 Foo", "Llama-4-Foo"])
def test_it_accepts_derived_names_that_begin_with_llama_from_3_1_on(slug: str, name: str) -> None:
    check = check_derived_model_name(terms_from_catalogue(slug), name)

    assert check.ok is True
    assert check.rule == "name_prefix"


@pytest.mark.parametrize("slug", LLAMA_3_1_AND_LATER)
@pytest.mark.parametrize("name", ["Foo-Llama", "MyLlama", "Foo Llama 3", "llama-foo", "Lama-Foo"])
def test_it_refuses_derived_names_that_do_not_begin_with_llama_from_3_1_on(slug: str, name: str) -> None:
    check = check_derived_model_name(terms_from_catalogue(slug), name)

    assert check.ok is False
    assert check.rule == "name_prefix"
    assert '"Llama"' in check.message


def test_it_accepts_a_version_number_written_against_llama_from_3_1_on() -> None:
    # 3.1+ only asks to include "Llama" at the beginning of the name, and "Llama3.1-8B-Foo" does. The word-boundary
    # rule that rightly refuses "Llama 30B" under Llama 3's "Llama 3" prefix must not refuse this.
    check = check_derived_model_name(terms_from_catalogue("llama-3.1"), "Llama3.1-8B-Foo")

    assert check.ok is True, check.message


# Naming (section 1.b.i). The sentences were read in meta-llama/llama3@a0940f9:LICENSE and
# meta-llama/llama-models@a9c89c4:models/{llama3_1,llama3_2,llama3_3,llama4}/LICENSE.


@pytest.mark.parametrize("slug", LLAMA_3_1_AND_LATER)
def test_it_names_a_model_trained_on_outputs_only_from_3_1_on(slug: str) -> None:
    """Llama 3.1, 3.2, 3.3 and 4, section 1.b.i, word for word the same in all four: "If you use the Llama
    Materials or any outputs or results of the Llama Materials to create, train, fine tune, or otherwise improve
    an AI model, which is distributed or made available, you shall also include "Llama" at the beginning of any
    such AI model name."

    Hand-computed: Acme fine-tunes its own model on answers generated by the version's model and publishes it.
    "Acme-Coder-7B" does not begin with "Llama": refused. "Llama-Acme-Coder-7B" does: accepted. The licence names
    outputs itself, so Corral needs no reading of its own.
    """
    terms = terms_from_catalogue(slug)

    refused = check_derived_model_name(terms, "Acme-Coder-7B", made_with="outputs")
    accepted = check_derived_model_name(terms, "Llama-Acme-Coder-7B", made_with="outputs")

    assert (refused.ok, refused.rule, refused.reading) == (False, "name_prefix", "")
    assert "or any outputs or results of them" in refused.message and '"Llama"' in refused.message
    assert (accepted.ok, accepted.reading) == (True, "")


@pytest.mark.parametrize("slug", LLAMA_3_1_AND_LATER)
def test_it_states_the_naming_rule_of_3_1_and_later_with_its_outputs_clause(slug: str) -> None:
    """The obligations text carries the same clause: materials "or any outputs or results" of them."""
    obligations = product_obligations(terms_from_catalogue(slug), licence_accepted=True, aup_accepted=True)

    assert obligations.derived_name_covers_outputs is True
    assert obligations.derived_name_rule == (
        "A model created, trained, fine tuned or otherwise improved with the Llama Materials or any outputs or "
        'results of them, and distributed or made available, must have a name beginning with "Llama" '
        "(section 1.b.i)."
    )
    assert obligations.derived_name_reading == ""


def test_it_keeps_llama_3s_own_naming_rule_without_the_outputs_clause() -> None:
    """Llama 3, section 1.b.i: "If you use the Llama Materials to create, train, fine tune, or otherwise improve
    an AI model, which is distributed or made available, you shall also include "Llama 3" at the beginning of any
    such AI model name." Outputs are not named.

    Hand-computed: a model fine-tuned from Meta Llama 3 8B and published as "Acme-8B" is refused, "Llama 3 Acme
    8B" accepted; the rule stated names the Llama Materials only.
    """
    terms = terms_from_catalogue("llama-3")
    obligations = product_obligations(terms, licence_accepted=True, aup_accepted=True)

    refused = check_derived_model_name(terms, "Acme-8B")
    accepted = check_derived_model_name(terms, "Llama 3 Acme 8B")

    assert (refused.ok, accepted.ok) == (False, True)
    assert "outputs" not in refused.message and '"Llama 3"' in refused.message
    assert obligations.derived_name_covers_outputs is False
    assert obligations.derived_name_rule == (
        "A model created, trained, fine tuned or otherwise improved with the Llama Materials, and distributed or "
        'made available, must have a name beginning with "Llama 3" (section 1.b.i).'
    )


def test_it_shows_its_reading_for_a_model_made_from_llama_3_outputs() -> None:
    """Llama 3's naming clause is silent on outputs; section 1.b.v says: "You will not use the Llama Materials or
    any output or results of the Llama Materials to improve any other large language model (excluding Meta Llama
    3 or derivative works thereof)."

    Hand-computed: a model trained on Meta Llama 3 outputs and published as "Acme-8B". Corral's reading: the only
    large language model outputs may improve is Meta Llama 3 or a derivative work of it, which is made with the
    Llama Materials, so the "Llama 3" prefix applies: refused, and the check says it used a reading. The same
    name checked as made with the materials needs no reading.
    """
    terms = terms_from_catalogue("llama-3")

    from_outputs = check_derived_model_name(terms, "Acme-8B", made_with="outputs")
    named = check_derived_model_name(terms, "Llama 3 Acme 8B", made_with="outputs")
    from_materials = check_derived_model_name(terms, "Acme-8B", made_with="materials")

    assert (from_outputs.ok, named.ok) == (False, True)
    assert "not their outputs" in from_outputs.reading and "1.b.v" in from_outputs.reading
    assert named.reading == from_outputs.reading
    assert from_materials.reading == ""
    assert product_obligations(terms, licence_accepted=True, aup_accepted=True).derived_name_reading == \
        from_outputs.reading


@pytest.mark.parametrize("slug", ["llama-2", "code-llama"])
def test_it_needs_no_reading_where_the_version_sets_no_naming_rule(slug: str) -> None:
    """The Llama 2 text has no naming sentence: a model made from its outputs may be named anything."""
    terms = terms_from_catalogue(slug)

    check = check_derived_model_name(terms, "Acme-Coder", made_with="outputs")

    assert (check.ok, check.rule, check.reading) == (True, "no_naming_rule", "")
    assert derived_name_rule(terms) is None


def test_it_refuses_an_unknown_made_with() -> None:
    with pytest.raises(ValueError, match="made_with"):
        check_derived_model_name(terms_from_catalogue("llama-3.1"), "Llama-Foo", made_with="weights")


@pytest.mark.parametrize("slug", ALL_SLUGS)
@pytest.mark.parametrize("name", ["", "   "])
def test_it_refuses_an_empty_derived_model_name(slug: str, name: str) -> None:
    check = check_derived_model_name(terms_from_catalogue(slug), name)

    assert check.ok is False
    assert check.rule == "non_empty"


@pytest.mark.parametrize("slug", ["llama-2", "code-llama"])
@pytest.mark.parametrize("name", ["Foo", "Foo-Llama", "Llama 3 Foo", "MyLlama"])
def test_it_sets_no_naming_rule_for_llama_2_and_code_llama(slug: str, name: str) -> None:
    terms = terms_from_catalogue(slug)
    check = check_derived_model_name(terms, name)

    assert check.ok is True
    assert check.rule == "no_naming_rule"
    assert product_obligations(terms, licence_accepted=True, aup_accepted=True).derived_name_prefix is None


@pytest.mark.parametrize(
    ("slug", "prefix"),
    [
        ("llama-3", "Llama 3"),
        ("llama-3.1", "Llama"),
        ("llama-3.2", "Llama"),
        ("llama-3.3", "Llama"),
        ("llama-4", "Llama"),
    ],
)
def test_it_reports_the_derived_name_prefix_among_the_obligations(slug: str, prefix: str) -> None:
    obligations = product_obligations(terms_from_catalogue(slug), licence_accepted=True, aup_accepted=True)

    assert obligations.derived_name_prefix == prefix


@pytest.mark.parametrize(
    ("slug", "may_improve"),
    [
        ("llama-2", False),
        ("code-llama", False),
        ("llama-3", False),
        ("llama-3.1", True),
        ("llama-3.2", True),
        ("llama-3.3", True),
        ("llama-4", True),
    ],
)
def test_it_forbids_improving_other_models_with_outputs_only_up_to_llama_3(slug: str, may_improve: bool) -> None:
    obligations = product_obligations(terms_from_catalogue(slug), licence_accepted=True, aup_accepted=True)

    assert obligations.outputs_may_improve_other_models is may_improve


@pytest.mark.parametrize(
    ("slug", "restricted"),
    [
        ("llama-2", False),
        ("code-llama", False),
        ("llama-3", False),
        ("llama-3.1", False),
        ("llama-3.2", True),
        ("llama-3.3", True),
        ("llama-4", True),
    ],
)
def test_it_withholds_multimodal_rights_in_the_eu_from_llama_3_2_on(slug: str, restricted: bool) -> None:
    obligations = product_obligations(terms_from_catalogue(slug), licence_accepted=True, aup_accepted=True)

    assert obligations.eu_multimodal_restriction is restricted


@pytest.mark.parametrize("slug", ALL_SLUGS)
def test_it_always_requires_a_copy_of_the_agreement_and_the_versions_own_aup(slug: str) -> None:
    terms = terms_from_catalogue(slug)
    obligations = product_obligations(terms, licence_accepted=True, aup_accepted=True)

    assert obligations.redistribute_licence_copy is True
    assert obligations.version == terms.version
    assert obligations.aup_version == ("llama-2" if slug == "code-llama" else slug)
    assert obligations.aup_url == terms.aup_url


@pytest.mark.parametrize(
    ("licence_accepted", "aup_accepted"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_it_reports_acceptance_as_given(licence_accepted: bool, aup_accepted: bool) -> None:
    obligations = product_obligations(
        terms_from_catalogue("llama-3.3"), licence_accepted=licence_accepted, aup_accepted=aup_accepted
    )

    assert obligations.licence_accepted is licence_accepted
    assert obligations.aup_accepted is aup_accepted


@pytest.mark.parametrize(("slug", "ambiguous"), [("code-llama", True), ("llama-2", False), ("llama-4", False)])
def test_it_carries_the_ambiguous_date_flag_into_the_obligations(slug: str, ambiguous: bool) -> None:
    obligations = product_obligations(terms_from_catalogue(slug), licence_accepted=True, aup_accepted=True)

    assert obligations.date_ambiguous is ambiguous
