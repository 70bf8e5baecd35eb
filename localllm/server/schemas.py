"""Request bodies of the native API, as Ollama's clients send them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Named(BaseModel):
    """Ollama accepts ``model`` and, from older clients, ``name``."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(default="", description="Model name, e.g. gemma3:270m or hf.co/user/repo:Q4_K_M")
    name: str | None = Field(default=None, description="Deprecated alias of model")

    @model_validator(mode="after")
    def _model_or_name(self) -> _Named:
        if not self.model and self.name:
            self.model = self.name
        if not self.model:
            raise ValueError("model is required")
        return self


class PullRequest(_Named):
    insecure: bool = False
    stream: bool = True


class ShowRequest(_Named):
    verbose: bool = False


class DeleteRequest(_Named):
    pass


class CopyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)
