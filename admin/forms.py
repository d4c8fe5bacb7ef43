"""The dashboard's forms: an urlencoded body read within the admin limit, turned into admin/schema.py.

A form gives strings; the admin API's models take integers strictly, so the
numbers are converted here (an empty limit is 0, unlimited) and everything
else is checked by the same models as the JSON API: one rule, one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from admin.api import invalid_fields
from edge.pipeline import read_body
from meshgate.errors import invalid_request

M = TypeVar("M", bound=BaseModel)

# The whole-number limits shared by keys and tenants (admin/schema.py's LimitsFields).
LIMIT_FIELDS = ("rpm", "tpm", "max_concurrency", "budget_tokens")


@dataclass(frozen=True, slots=True)
class Form:
    """A submitted form: every value of every field, as sent."""

    fields: dict[str, list[str]]

    def get(self, name: str) -> str:
        values = self.fields.get(name)
        return values[0].strip() if values else ""

    def every(self, name: str) -> list[str]:
        return [v.strip() for v in self.fields.get(name, []) if v.strip()]


async def read_form(request: Request, limit: int) -> Form:
    """The urlencoded body of a POST (what every dashboard form sends)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await read_body(request, limit)
    if raw and kind != "application/x-www-form-urlencoded":
        raise invalid_request("A form must be sent as application/x-www-form-urlencoded.")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise invalid_request("The form is not UTF-8.") from None
    return Form(parse_qs(text, keep_blank_values=True, max_num_fields=200))


def _count(form: Form, name: str) -> int:
    text = form.get(name).replace(",", "").replace("_", "")
    if not text:
        return 0
    if not text.isdigit():
        raise invalid_request(f"{name} must be a whole number (0: unlimited).", name)
    return int(text)


def limits(form: Form) -> dict[str, Any]:
    """The limit and budget fields of a key's or tenant's form, as the schema takes them."""
    fields: dict[str, Any] = {name: _count(form, name) for name in LIMIT_FIELDS}
    fields["budget_usd"] = form.get("budget_usd").removeprefix("$") or "0"
    fields["budget_period"] = form.get("budget_period") or "total"
    return fields


def build(model: type[M], fields: dict[str, Any]) -> M:
    """`fields` checked by the admin API's model; a bad one is a 400 naming it."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise invalid_fields(exc, "form") from None
