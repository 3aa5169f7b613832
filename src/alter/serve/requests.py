"""What a request may ask of a generation, and within which limits: the fields of
`GenerationSettings` a client can set per item. The server's item model extends it, the
API contract publishes its schema, the Predictor turns it into settings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from alter.data.generation import MIN_TEMPERATURE, GenerationSettings, checked_temperature, settings_from

# An input field must hold a character that is not white space, by one definition for the
# server and the published schema: Python's str.isspace and ECMAScript's \s together (they
# differ on \x1c-\x1f, \x85 and \ufeff), written so that both regex dialects read it alike.
NON_BLANK = r"[^\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"


def blank(text: str) -> bool:
    return re.search(NON_BLANK, text) is None


# What a client may ask beyond what GenerationSettings itself allows: the server's bounds.
REQUEST_BOUNDS: dict[str, dict[str, Any]] = {
    "temperature": {"le": 2.0, "json_schema_extra": {  # 0: greedy (or beams); a sample from MIN_TEMPERATURE
        "not": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": MIN_TEMPERATURE}}},
    "seed": {"le": 2**32 - 1},  # the same seed, the same sample
    "no_repeat_ngram_size": {"le": 16},
    "repetition_penalty": {"le": 10.0},
}  # `max_new_tokens` beyond the server's is cut to it; `num_beams` is bounded by --max-beams


class _RequestChecks(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator(*GenerationSettings.model_fields, mode="before", check_fields=False)
    @classmethod
    def _json_number(cls, value: Any, info: ValidationInfo) -> Any:
        """Only what JSON Schema calls a number (an integer: one without a fraction, 16.0 too):
        pydantic's lax mode would also take true, false and "2", which the published schema
        refuses (the contract test found both)."""
        if isinstance(value, (bool, str)):
            integer = cls.model_fields[info.field_name].annotation == int | None
            raise PydanticCustomError("int_type" if integer else "float_type",
                                      f"Input should be a valid {'integer' if integer else 'number'}")
        return value

    @field_validator("temperature", check_fields=False)
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        return checked_temperature(value)


def _requested(name: str, field: FieldInfo) -> tuple[Any, FieldInfo]:
    """A setting's field as a request carries it: the same type and limits, the server's on top."""
    bounded = FieldInfo.merge_field_infos(field, Field(**REQUEST_BOUNDS.get(name, {})), default=None)
    return field.annotation, bounded


# The fields of GenerationSettings that a client can set per item; the server's item model
# extends it, the API contract publishes its schema, the Predictor turns it into settings.
RequestedGeneration = create_model(
    "RequestedGeneration", __base__=_RequestChecks,
    **{name: _requested(name, field) for name, field in GenerationSettings.model_fields.items()})


FIELDS = tuple(RequestedGeneration.model_fields)


def requested_settings(request: Mapping[str, Any]) -> GenerationSettings | None:
    """The generation settings an (already validated) request item asks for; None: none."""
    asked = {name: request[name] for name in FIELDS if request.get(name) is not None}
    return settings_from(asked) if asked else None
