"""Benchmarks: ``python -m bench <name> [--quick] [--out DIR]``, or ``all`` for every one.

Each benchmark prints a markdown table and writes one JSON file under ``--out`` with every
measurement, the machine and the settings. They are measurements, not timed tests: figures
are distributions from one run against a baseline taken in the same run.
"""
