"""What every section of the settings has in common: unknown keys are refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # A misspelt key in the file or the environment is an error, not a silent default.
    model_config = ConfigDict(extra="forbid", validate_default=True)
