"""Shared base for config sections: unknown keys are errors, every field carries a description."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. `extra="forbid"` turns a typo into an error that suggests the nearest valid key."""

    # allow_inf_nan=False: `algorithm.beta=inf` or a NaN weight would pass a `ge=0` bound and wreck the run hours in.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=False,
                              allow_inf_nan=False)
