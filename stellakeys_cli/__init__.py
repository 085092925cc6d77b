"""The ``stellaops`` / ``stella`` command line: argument parsing, output, calls into stellakeys."""
