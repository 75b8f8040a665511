"""Applications on top of the library: command line, demo, reports, zoo sweep, digits."""
