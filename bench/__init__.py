"""The benchmark of issue 5: data generator, server launcher, load driver, peer and report.

Run it with ``make bench`` (full size) or ``make bench-quick`` (a tenth of the data);
``python -m bench --help`` lists the options. docs/PERFORMANCE.md explains the figures.
"""
