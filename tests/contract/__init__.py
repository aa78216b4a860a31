"""Contract tests: one suite per port, run against every adapter."""
