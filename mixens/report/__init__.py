"""Summaries of many runs: cells (the data model), stats, tables and plots; `python -m mixens.summarize`."""
