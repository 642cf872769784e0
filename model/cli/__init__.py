"""The ``afm-ctr`` command line."""
