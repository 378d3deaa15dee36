"""Code shared by the tests: import as ``tests.helpers.<module>``, never from a test module."""
