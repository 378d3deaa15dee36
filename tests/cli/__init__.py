"""The command-line tool, on both layouts and on hostile trees."""
