"""The EU clause of the Llama 3.2, 3.3 and 4 Acceptable Use Policies: one rule, asked by every gate. No ORM here.

The Llama 3.2 AUP: "With respect to any multimodal models included in Llama 3.2, the rights granted under
Section 1(a) of the Llama 3.2 Community License Agreement are not being granted to you if you are an individual
domiciled in, or a company with a principal place of business in, the European Union. This restriction does
not apply to end users of a product or service that incorporates any such multimodal models." The 3.3 and 4
AUPs say the same of their versions.

The catalogue says which versions carry the clause (``LicenceVersion.eu_multimodal_restriction``), a base model
whether it is multimodal, and an organisation whether its principal place of business is in the EU
(``Organisation.eu_domiciled``). The gates that ask: registering or changing a product
(licensing/services.py), requesting or scaling up a deployment (inference/services.py), every gateway request
(inference/gateway/app.py), and a change of domicile, which drains the deployments it no longer allows
(``organisation_domicile_set``).
"""

from __future__ import annotations

LEVEL = "eu_multimodal"  # the alert level and the gateway's error code


def eu_multimodal_refusal(*, version_name: str, licence_name: str, restricted: bool, multimodal: bool,
                          eu_domiciled: bool) -> str | None:
    """Why the organisation may not use this model, quoting the clause; None when the clause does not apply.

    End users are exempt, the organisation building the product is not: Corral's tenants build products (they
    register them, deploy models, call the gateway with their keys), so the clause applies to them.
    """
    if not (restricted and multimodal and eu_domiciled):
        return None
    return (
        f"The {version_name} Acceptable Use Policy does not grant the rights to its multimodal models to a company "
        f"whose principal place of business is in the European Union: \"With respect to any multimodal models "
        f"included in {version_name}, the rights granted under Section 1(a) of the {licence_name} Agreement are "
        f"not being granted to you if you are an individual domiciled in, or a company with a principal place of "
        f"business in, the European Union.\" (The end users of a product that includes them are exempt; the "
        f"company that builds it is not.)"
    )
