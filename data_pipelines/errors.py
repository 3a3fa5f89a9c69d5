class ConversionError(ValueError):
  """A source that cannot be converted; the message names the file and the row or client."""


class ConversionWarning(UserWarning):
  """A source that converts, but not as it describes itself (the message names the file)."""
