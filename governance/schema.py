"""OpenAPI description of Corral's authentication, for drf-spectacular."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "access.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "Corral API key (crl_xxxxxxxx.secret)",
            "description": "An API key created in the portal, the API or with manage.py create_api_key.",
        }


# The error statuses every operation can answer, in DRF's shape ({"detail": ...}, or {field: [messages]} for a
# 400). Without them a client generated from the schema, and any check of responses against it, meets
# statuses the schema says cannot happen.
_ERRORS = {
    "400": "The request is malformed or breaks a rule; the body names the field and the rule.",
    "401": "No credentials, or an unknown, revoked or expired key.",
    "403": "The credential lacks the scope this request needs.",
    "404": "No such object among the caller's (another tenant's object is not revealed), or no such page.",
}
_WRITE_ERRORS = {
    "409": "The request conflicts with an existing record.",
    "413": "The request body is larger than this service accepts.",
}
_ERROR_SCHEMA = {
    "type": "object",
    "description": "DRF's error shape: `detail`, or the fields of the request with their messages.",
    "properties": {"detail": {"type": "string"}},
    "additionalProperties": True,
}


def document_errors(result: dict, generator: object, request: object, public: bool) -> dict:
    """drf-spectacular postprocessing hook: add the error responses to every operation that has not its own."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = _ERROR_SCHEMA
    reference = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            errors = dict(_ERRORS)
            if method in ("post", "put", "patch", "delete"):
                errors.update(_WRITE_ERRORS)
            responses = operation.setdefault("responses", {})
            for status, description in errors.items():
                responses.setdefault(status, {"content": reference, "description": description})
    return result
