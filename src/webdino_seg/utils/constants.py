"""Values every layer shares, kept apart from the modules that compute with them (importing this costs nothing)."""

VOID = 255  # the mask value for unlabelled pixels: ignored by every metric and loss, and kept by the readers

# what `video` puts in the environment before torch loads, unless it is set there already: OpenMP's idle threads
# sleep instead of spinning, so the codec threads get the cores between the model's operations
# (benchmarks/video_pace.py on 2 cores: 55-59 FPS before, 57-68 with this, 65-76 with the codec threads at nice +10
# too; a GPU run is not affected)
VIDEO_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}
