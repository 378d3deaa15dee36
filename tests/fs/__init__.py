"""The engine on real directories: crashes, corruption, disk full, hostile trees, bad input."""
