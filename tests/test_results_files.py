"""Results files on disk: written whole, with the permissions of the rest of the run folder."""

from __future__ import annotations

import os

import pytest

from mixens.cli import console_table
from mixens.files import write_atomic


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


def test_the_printed_table_is_lm_evals_with_standard_errors_groups_apart_and_the_speed():
    scores = {
        "results": {
            "mmlu_x": {"alias": "mmlu_x", "acc,none": 0.5, "acc_stderr,none": 0.05, "sample_len": 8},
            "mmlu_y": {"alias": "mmlu_y", "acc,none": 0.25, "acc_stderr,none": 0.04, "sample_len": 8},
        },
        "groups": {"mmlu": {"alias": "mmlu", "acc,none": 0.375, "acc_stderr,none": 0.032}},
        "group_subtasks": {"mmlu": ["mmlu_x", "mmlu_y"]},
        "versions": {"mmlu_x": 1.0, "mmlu_y": 1.0, "mmlu": 2},
        "n-shot": {"mmlu_x": 0, "mmlu_y": 0},
        "higher_is_better": {"mmlu_x": {"acc": True}, "mmlu_y": {"acc": True}, "mmlu": {"acc": True}},
    }
    speed = {"tokens_generated": 64, "wall_seconds": 2.0, "tokens_per_second": 32.0, "forward_passes_per_step": 1.0}
    table = console_table({"lm_eval": scores, "speed": speed})
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines() if line[:1] == "|"]
    rows = {row[0]: row[1:6] + [float(row[6]), row[7], float(row[8])] for row in cells if row[-1][:1].isdigit()}
    assert rows["- mmlu_x"] == ["1", "none", "0", "acc", "↑", 0.5, "±", 0.05]  # a subtask, under its group
    assert rows["mmlu"] == ["2", "none", "", "acc", "↑", 0.375, "±", 0.032]
    assert table.index("|Groups") > table.index("- mmlu_y")  # the groups in a table of their own, after
    assert "sample_len" not in table
    assert table.splitlines()[-1] == "generated 64 tokens in 2.0 s (32.0 tokens/s), 1.00 forward passes per step"
