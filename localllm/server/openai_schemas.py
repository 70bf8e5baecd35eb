"""Request bodies of the OpenAI-compatible API, as the official ``openai`` client sends them.

Every field OpenAI documents for these endpoints is accepted; the ones that do not apply to a local
runner (``user``, ``store``, ``metadata``, ...) are ignored. Values are checked here, before anything
loads, so a bad request is a 400 naming its parameter and never reaches llama.cpp.

Two extension fields, both optional: ``options`` (Ollama's model options, e.g. ``{"num_ctx": 8192}``:
the OpenAI API has no way to set the context size) and ``keep_alive``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from ..names import MODEL_NAME_PATTERN

KeepAlive = str | float | int | None
NAME_PATTERN = r"^[a-zA-Z0-9_.\-]{1,64}$"
MAX_CHOICES = 128


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Common(_Body):
    model: str = Field(
        min_length=1, description="A model in the store, e.g. gemma3:270m",
        json_schema_extra={"pattern": MODEL_NAME_PATTERN},
    )
    user: str | None = None
    options: dict[str, Any] | None = Field(
        default=None, description="localllm extension: Ollama model options, e.g. {\"num_ctx\": 8192}"
    )
    keep_alive: KeepAlive = Field(default=None, description="localllm extension: how long the model stays loaded")


class StreamOptions(_Body):
    include_usage: bool = False


TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,9}$")]
Bias = Annotated[float, Field(ge=-100, le=100)]
LogitBias = Annotated[dict[TokenId, Bias], WithJsonSchema({
    "type": "object",
    "patternProperties": {r"^[0-9]{1,9}$": {"type": "number", "minimum": -100, "maximum": 100}},
    "additionalProperties": False,
})]


class _Sampled(_Common):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: LogitBias | None = Field(
        default=None, description="Token id (a string) -> bias added to its logit; -100 bans the token"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None


# --- chat ----------------------------------------------------------------------
class ContentPart(_Body):
    """A part of a message's content; only text reaches a text model (a missing ``text`` reads as empty)."""

    type: Literal["text", "image_url", "input_audio", "file", "refusal"]
    text: str | None = None
    image_url: dict[str, Any] | None = None
    refusal: str | None = None


class FunctionCall(_Body):
    name: str = Field(min_length=1)
    arguments: str = ""


class ToolCall(_Body):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    """One message. Lenient where OpenAI is strict and no harm follows: missing content reads as empty, a
    tool result without ``tool_call_id`` is still shown to the model, ``tool_calls`` count only on assistants."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class FunctionDefinition(_Body):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Body):
    name: str = Field(min_length=1)


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Body):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = Field(default=None, description="Without it, json_schema means any JSON")


class ChatCompletionRequest(_Sampled):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, description="Deprecated alias of max_completion_tokens")
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None


# --- completions ---------------------------------------------------------------
Prompt = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    | Annotated[list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]], Field(min_length=1)]
)


class CompletionRequest(_Sampled):
    prompt: Prompt
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    max_tokens: int | None = Field(default=16, ge=0)
    best_of: int | None = Field(default=None, ge=1, le=20)


# --- embeddings ----------------------------------------------------------------
Text = Annotated[str, Field(min_length=1)]
Tokens = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class EmbeddingRequest(_Common):
    input: Text | Annotated[list[Text], Field(min_length=1)] | Tokens | Annotated[list[Tokens], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
