"""Moved to testbed/gcs_front.py. Only tests/test_cloud.py still imports it from here: delete this
file once it imports `from testbed.gcs_front import GcsFront`."""
from testbed.gcs_front import GcsFront  # noqa: F401
