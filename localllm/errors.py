"""The one exception hierarchy of localllm.

Every error a user can cause or meet derives from :class:`LocalLLMError`; the
server maps each class to an HTTP status in one place (``server/errors.py``)::

    LocalLLMError                      500
    ├── InvalidRequest                 400  bad input of any kind
    │   ├── InvalidName                400  a model name that does not parse
    │   ├── InvalidDigest              400  not sha256:<64 hex>
    │   ├── DigestMismatch             400  uploaded bytes do not hash to the digest
    │   ├── AmbiguousFile              400  a Hub repo with several files and no way to choose
    │   ├── TemplateError              400  a prompt template that does not parse or render
    │   ├── UnsupportedInput           400  e.g. images for a model without vision, tools without a template for them
    │   │   └── UnsupportedOperator    400  an ONNX graph uses an operator (or variant) the image engine lacks
    │   └── ContextLengthExceeded      400  a prompt longer than the loaded context
    ├── Unauthorized                   401  LOCALLLM_API_KEY is set and the request lacks it
    ├── NotFound                       404
    │   ├── ModelNotFound              404  no such model in the store
    │   ├── BlobNotFound               404
    │   └── RemoteNotFound             404  no such repository or file on the Hub
    ├── InvalidModelFile               422  a GGUF that is truncated or malformed
    │   └── BrokenModel                422  a model whose runner failed to load twice in a row
    ├── RegistryError                  502  the Hub failed or lied
    │   └── VerificationFailed         502  downloaded bytes do not match the Hub's sha256
    ├── RunnerStopped                  500  a model's runner process died with the request in it
    ├── ServerBusy                     503  every slot and queue place is taken (with Retry-After)
    ├── InsufficientMemory             507  a model that does not fit the memory budget even alone
    ├── StorageError                   507  the disk is full or not writable
    └── ClientError                         raised by the CLI's client, never served
        ├── DaemonUnavailable               no daemon answers at LOCALLLM_HOST
        └── ApiError                        the daemon answered with an error (carries its status)

Each error may name the request field at fault (``param``) and a machine-readable ``code``; the
OpenAI-compatible face puts both in its error object, the native face shows the message only.
"""

from __future__ import annotations


class LocalLLMError(Exception):
    status_code = 500
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(LocalLLMError):
    status_code = 400


class InvalidName(InvalidRequest):
    pass


class InvalidDigest(InvalidRequest):
    pass


class DigestMismatch(InvalidRequest):
    pass


class AmbiguousFile(InvalidRequest):
    pass


class TemplateError(InvalidRequest):
    pass


class UnsupportedInput(InvalidRequest):
    pass


class UnsupportedOperator(UnsupportedInput):
    """An ONNX model needs an operator, or an attribute of one, that localllm.images does not implement."""


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class Unauthorized(LocalLLMError):
    status_code = 401
    code = "invalid_api_key"


class NotFound(LocalLLMError):
    status_code = 404


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, message: str, *, param: str | None = "model", code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)


class BlobNotFound(NotFound):
    pass


class RemoteNotFound(NotFound):
    pass


class InvalidModelFile(LocalLLMError):
    status_code = 422


class BrokenModel(InvalidModelFile):
    pass


class RunnerStopped(LocalLLMError):
    pass


class RegistryError(LocalLLMError):
    status_code = 502


class VerificationFailed(RegistryError):
    pass


class ServerBusy(LocalLLMError):
    status_code = 503
    code = "server_overloaded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InsufficientMemory(LocalLLMError):
    status_code = 507
    code = "insufficient_memory"


class StorageError(LocalLLMError):
    status_code = 507


class ClientError(LocalLLMError):
    pass


class DaemonUnavailable(ClientError):
    status_code = 503


class ApiError(ClientError):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code
