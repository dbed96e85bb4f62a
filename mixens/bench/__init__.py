"""The speed study: single, averaging and mixture timed in one process on the same prompts, against the
ideal that a catch-up micro-benchmark of the same machine predicts. Run it with `python -m mixens.bench`."""
