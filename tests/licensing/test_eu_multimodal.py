"""The EU clause of the Llama 3.2, 3.3 and 4 Acceptable Use Policies as one pure rule (licensing/eu_multimodal.py).

The Llama 3.2 AUP: "With respect to any multimodal models included in Llama 3.2, the rights granted under
Section 1(a) of the Llama 3.2 Community License Agreement are not being granted to you if you are an individual
domiciled in, or a company with a principal place of business in, the European Union. This restriction does not
apply to end users of a product or service that incorporates any such multimodal models."
"""

from __future__ import annotations

import itertools

import pytest

from licensing.eu_multimodal import eu_multimodal_refusal

LLAMA_3_2 = {"version_name": "Llama 3.2", "licence_name": "Llama 3.2 Community License"}


def test_it_refuses_a_multimodal_model_of_a_restricted_version_to_an_eu_company_quoting_the_clause() -> None:
    """"... are not being granted to you if you are ... a company with a principal place of business in, the
    European Union": Llama 3.2 (restricted), 11B Vision (multimodal), an EU company: refused."""
    refusal = eu_multimodal_refusal(**LLAMA_3_2, restricted=True, multimodal=True, eu_domiciled=True)

    assert refusal is not None
    assert ('"With respect to any multimodal models included in Llama 3.2, the rights granted under Section 1(a) '
            'of the Llama 3.2 Community License Agreement are not being granted to you') in refusal
    assert "a company with a principal place of business in, the European Union." in refusal


@pytest.mark.parametrize("restricted, multimodal, eu_domiciled",
                         [c for c in itertools.product([True, False], repeat=3) if c != (True, True, True)])
def test_it_allows_every_other_case(restricted: bool, multimodal: bool, eu_domiciled: bool) -> None:
    """"With respect to any multimodal models included in Llama 3.2": a text-only model (1B), a version without
    the clause (3.1), or a company whose principal place of business is outside the EU is not refused."""
    assert eu_multimodal_refusal(**LLAMA_3_2, restricted=restricted, multimodal=multimodal,
                                 eu_domiciled=eu_domiciled) is None
