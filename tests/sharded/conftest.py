"""The sharded suite: 8 simulated CPU devices (set before JAX touches a device).

It runs in its own process (tests/test_parallel.py launches it; or directly:
`UNLEARN_JAX_SHARDED=1 python -m pytest tests/sharded`), because the device count is
fixed when JAX first initialises its backend.
"""

import os

flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ["JAX_PLATFORMS"] = "cpu"
