"""Offline stand-ins for TF Serving and Cloud Storage that tests and benchmarks share; not part of
the installed package.

`serving_server` (a TF Serving stand-in), `gcs_front` (the GCS emulator behind a TLS front, also
the pytest plugin tests/conftest.py registers), and `exports`, the one builder of the small
SavedModel exports they serve. setup.py names its packages (testbed is not one of them) and
.dockerignore leaves it out of the image.
"""
