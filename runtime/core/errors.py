"""The exceptions simx raises. The CLI turns any SimxError into one line on stderr."""


def first_line(e: BaseException, default: str | None = None) -> str:
    """An exception as one short line, for one-line errors; ``default`` (else the type name)
    when it has no message."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else (default or type(e).__name__)


class SimxError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class ModelFileError(SimxError):
    """A model file that is missing, not ONNX, or not usable by simx."""


class ProviderError(SimxError):
    """An execution provider that was asked for but is not available."""


class SearchError(SimxError):
    """A search that cannot run as asked (empty cache, wrong dimension, missing faiss, a text
    tower of another model)."""
