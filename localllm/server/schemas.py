"""Request bodies of the native API, as Ollama's clients send them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..names import MODEL_NAME_PATTERN


class _Named(BaseModel):
    """Ollama accepts ``model`` and, from older clients, ``name``."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"anyOf": [{"required": ["model"]},
                                     {"required": ["name"], "properties": {"name": {"type": "string"}}}]},
    )

    model: str = Field(default="", description="Model name, e.g. gemma3:270m or hf.co/user/repo:Q4_K_M",
                       json_schema_extra={"pattern": MODEL_NAME_PATTERN})
    name: str | None = Field(default=None, description="Deprecated alias of model",
                             json_schema_extra={"pattern": MODEL_NAME_PATTERN})

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


class CreateRequest(_Named):
    """Ollama's current form (``from``, ``files``, ...) or the older ``modelfile`` text."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True,
                              json_schema_extra=_Named.model_config["json_schema_extra"])

    from_: str | None = Field(default=None, alias="from", description="The model to start from")
    files: dict[str, str] | None = Field(default=None, description="GGUF file name -> digest of an uploaded blob")
    adapters: dict[str, str] | None = Field(default=None, description="LoRA file name -> digest of an uploaded blob")
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None
    modelfile: str | None = Field(default=None, description="Older clients: the Modelfile's text")
    quantize: str | None = Field(default=None, description="Not supported: quantize with llama.cpp's tools")
    stream: bool = True


class CopyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source: str = Field(min_length=1, json_schema_extra={"pattern": MODEL_NAME_PATTERN})
    destination: str = Field(min_length=1, json_schema_extra={"pattern": MODEL_NAME_PATTERN})


Format = str | dict[str, Any] | None
KeepAlive = str | float | int | None


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    index: int | None = None


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    function: ToolCallFunction


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None  # a tool result may name the call it answers

    def for_template(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [call.model_dump(exclude_none=True) for call in self.tool_calls]
        if self.tool_name:
            data["tool_name"] = data["name"] = self.tool_name
        if self.tool_call_id:
            data["tool_call_id"] = self.tool_call_id
        return data


def template_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """The conversation for the template; a tool result that names only its call's id gets the tool's name."""
    names: dict[str, str] = {}
    result = []
    for message in messages:
        data = message.for_template()
        names.update({call.id: call.function.name for call in message.tool_calls or [] if call.id})
        if message.role == "tool" and not message.tool_name and message.tool_call_id in names:
            data["tool_name"] = data["name"] = names[message.tool_call_id]
        result.append(data)
    return result


class GenerateRequest(_Named):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    format: Format = None
    images: list[str] | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    stream: bool = True
    think: bool | str | None = None
    # image models (Ollama's experimental image generation fields)
    width: int | None = None
    height: int | None = None
    steps: int | None = None


class ChatRequest(_Named):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: Format = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    stream: bool = True
    think: bool | str | None = None


class EmbedRequest(_Named):
    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class EmbeddingsRequest(_Named):
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
