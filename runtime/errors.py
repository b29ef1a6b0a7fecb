"""The exceptions simx raises. The CLI turns any SimxError into one line on stderr."""


class SimxError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class ModelFileError(SimxError):
    """A model file that is missing, not ONNX, or not usable by simx."""


class ProviderError(SimxError):
    """An execution provider that was asked for but is not available."""
