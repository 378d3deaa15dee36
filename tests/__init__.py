"""The tests of candle-ckpt (a package: shared code is in tests.helpers)."""
