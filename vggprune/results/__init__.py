"""Reading, checking and presenting benchmark runs: the case record, tables, plots, compare and calibration.

Nothing here imports torch (tests/test_light_readers.py holds the package to it), so a CI job or a
laptop can read, report and compare runs without the training stack.
"""
