"""Results files on disk: written whole, with the permissions of the rest of the run folder."""

from __future__ import annotations

import os

import pytest

from mixens.files import write_atomic
from mixens.results_files import results_table


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_results_files_get_the_mode_of_any_other_new_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "results.json", "{}\n")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = (tmp_path / "results.json").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "results.json").read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_the_printed_table_shows_scores_not_sample_counts():
    table = results_table(
        {"gsm8k": {"exact_match,strict": 0.25, "exact_match_stderr,strict": 0.1, "sample_len": 8}}, {}
    )
    assert "exact_match,strict" in table and "0.2500" in table
    assert "sample_len" not in table and "stderr" not in table
