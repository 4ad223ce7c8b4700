"""Running a study (``stage=pipeline``): ``spec.py`` (its steps, methods and comparisons, checked),
``runner.py`` (each step planned, keyed, reused or run, recorded in step.json), ``parallel.py``
(N steps at a time), ``results.py`` (the finished steps read back), ``report.py`` and
``figures.py`` (report.md, report.json and the figures)."""
