"""The applications on top of the library: the command line, the demo server and the benchmark."""
