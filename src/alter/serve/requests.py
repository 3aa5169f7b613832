"""What a request may ask of a generation, and within which limits: the fields of
`GenerationSettings` a client can set per item. The server's item model extends it, the
API contract publishes its schema, the Predictor turns it into settings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from alter.data.generation import MIN_TEMPERATURE, GenerationSettings, checked_temperature, settings_from

# An input field must hold a character that is not white space, by one definition for the
# server and the published schema: Python's str.isspace and ECMAScript's \s together (they
# differ on \x1c-\x1f, \x85 and \ufeff), written so that both regex dialects read it alike.
NON_BLANK = r"[^\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"


def blank(text: str) -> bool:
    return re.search(NON_BLANK, text) is None


class RequestedGeneration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(default=None, ge=1)  # more than the server's is cut to it
    num_beams: int | None = Field(default=None, ge=1)  # at most the server's --max-beams
    # 0: greedy (or beams); from MIN_TEMPERATURE to 2: a sample (one beam).
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, json_schema_extra={
        "not": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": MIN_TEMPERATURE}})
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)  # the same seed, the same sample
    no_repeat_ngram_size: int | None = Field(default=None, ge=0, le=16)
    repetition_penalty: float | None = Field(default=None, ge=1.0, le=10.0)

    @field_validator("max_new_tokens", "num_beams", "temperature", "top_p", "seed", "no_repeat_ngram_size",
                     "repetition_penalty", mode="before")
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

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        return checked_temperature(value)


FIELDS = tuple(RequestedGeneration.model_fields)


def requested_settings(request: Mapping[str, Any]) -> GenerationSettings | None:
    """The generation settings an (already validated) request item asks for; None: none."""
    asked = {name: request[name] for name in FIELDS if request.get(name) is not None}
    return settings_from(asked) if asked else None
