class ConversionError(ValueError):
  """A source that cannot be converted; the message names the file and the row or client."""
