"""How a generation task writes: beams, repetition controls, length, sampling. Saved with
the task (`TaskSpec.generation`), set per task in a config, overridable per request; how
the settings become token choices is `alter.models.decoding`."""

from __future__ import annotations

import secrets

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MIN_TEMPERATURE = 0.01  # below it the scaled logits of a float32 model overflow


def checked_temperature(value: float | None) -> float | None:
    if value and value < MIN_TEMPERATURE:
        raise ValueError(f"temperature: 0 (greedy) or from {MIN_TEMPERATURE} (a sample)")
    return value


class GenerationSettings(BaseModel):
    """Every field is optional: a field left unset takes the next level's value (a request
    over its task's settings over the caller's defaults, `over`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int | None = Field(default=None, ge=1)
    num_beams: int | None = Field(default=None, ge=1)
    no_repeat_ngram_size: int | None = Field(default=None, ge=0)  # 0: off; n: no n-gram written twice
    repetition_penalty: float | None = Field(default=None, ge=1.0)  # 1: off; divides a written token's logit
    temperature: float | None = Field(default=None, ge=0.0)  # 0: greedy (or beams); > 0: sampling
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)  # sampling: the nucleus kept
    seed: int | None = Field(default=None, ge=0)  # sampling: the draw's seed (default: a random one)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        return checked_temperature(value)

    @model_validator(mode="after")
    def _one_strategy(self) -> GenerationSettings:
        if (self.temperature or 0) > 0 and (self.num_beams or 1) > 1:
            raise ValueError("sampling (temperature > 0) writes one beam: set num_beams to 1 or temperature to 0")
        return self

    def over(self, base: GenerationSettings | None) -> GenerationSettings:
        """These settings, with `base`'s value wherever a field is unset here."""
        if base is None:
            return self
        mine = self.model_dump(exclude_none=True)
        if self.samples and self.num_beams is None:
            mine["num_beams"] = 1  # asking for a sample asks for one beam
        return settings_from({**base.model_dump(exclude_none=True), **mine})

    @property
    def samples(self) -> bool:
        return (self.temperature or 0) > 0

    @property
    def greedy_only(self) -> bool:
        """Plain greedy: nothing changes the logits, the argmax picks."""
        return not self.samples and not self.no_repeat_ngram_size and (self.repetition_penalty or 1.0) == 1.0

    def with_seed(self) -> GenerationSettings:
        """A sampling setting gets a seed of its own when none was given (a draw is then
        independent of the other rows and of the process's random state)."""
        if self.samples and self.seed is None:
            return self.model_copy(update={"seed": secrets.randbelow(2**31)})
        return self


def settings_from(fields: dict) -> GenerationSettings:
    """Settings from plain fields; what cannot be (beams and a sample together) is a
    ValueError with pydantic's message alone."""
    try:
        return GenerationSettings(**fields)
    except ValidationError as error:
        raise ValueError(error.errors()[0]["msg"].removeprefix("Value error, ")) from None


# What a newly declared generation task writes with where its settings say nothing
# (`TaskSpec.declared`): greedy summaries looped on a phrase 21 times in 100 unseen dialogues,
# an e-mail subject task's too ("NYMEX - Fimat - NYMEEX - ..."); with no 3-gram written twice,
# once, and dialogsum's ROUGE-L was no lower (docs/serving.md).
DEFAULT_WRITING = GenerationSettings(no_repeat_ngram_size=3)
