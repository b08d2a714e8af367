"""Values every layer shares, kept apart from the modules that compute with them (importing this costs nothing)."""

VOID = 255  # the mask value for unlabelled pixels: ignored by every metric and loss, and kept by the readers
