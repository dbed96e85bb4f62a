"""Every summary figure from a fixture sweep: fitted axes, interval artists present, no colliding labels."""

from __future__ import annotations

import itertools

import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.text import Text
from test_summarize import SEEDS, run_config, sweep, write_run  # noqa: F401 (sweep is a fixture)

from mixens.report.cells import group_cells, load_runs
from mixens.report.plots import (
    accuracy_figure,
    accuracy_series,
    difference_series,
    differences_figure,
    lambda_figure,
    speedup_figure,
)
from mixens.report.tables import me_minus_ce


@pytest.fixture(scope="module")
def summary(sweep):  # noqa: F811
    cells = group_cells(load_runs([sweep])[0])
    return cells, me_minus_ce(cells)


def texts(fig) -> list:
    fig.canvas.draw()
    found = {id(t): t for t in fig.findobj(Text)}.values()  # findobj may reach one text by two paths
    hidden = set()  # labels of ticks outside the view limits exist but are not drawn
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            hidden |= {id(t.label1) for t in axis.get_major_ticks() if not low <= t.get_loc() <= high}
    return [t for t in found if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


def assert_no_overlapping_labels(fig) -> None:
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts(fig)]
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), f"labels overlap: {a!r} and {b!r}"


def test_accuracy_has_an_interval_per_point_on_an_axis_fitted_to_them(summary):
    cells, _ = summary
    fig = accuracy_figure(cells)
    (ax,) = fig.axes
    points = next(iter(accuracy_series(cells).values()))
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(points)
    with_interval = [c for c in bars if c.has_xerr]
    assert len(with_interval) == sum(1 for p in points if p[2] == p[2])  # every point whose interval exists
    low, high = ax.get_xlim()
    data_low = min(p[2] if p[2] == p[2] else p[1] for p in points)
    data_high = max(p[3] if p[3] == p[3] else p[1] for p in points)
    assert 0 < low <= data_low and data_high <= high  # not from 0: fitted to the data
    assert (high - low) < 1.3 * (data_high - data_low)
    assert_no_overlapping_labels(fig)


def test_differences_mark_zero_shade_the_margin_and_show_each_interval(summary):
    _, paired = summary
    fig = differences_figure(paired)
    (ax,) = fig.axes
    series = difference_series(paired)
    assert len([c for c in ax.containers if isinstance(c, ErrorbarContainer)]) == len(series)
    (band,) = [p for p in ax.patches if p.get_label().startswith("equivalence margin")]
    assert band.get_x() == pytest.approx(-1.0) and band.get_x() + band.get_width() == pytest.approx(1.0)  # ±1 point
    assert any(list(line.get_xdata()) == [0, 0] for line in ax.lines)  # the zero line
    low, high = ax.get_xlim()
    assert low <= min(s[2] for s in series) and max(s[3] for s in series) <= high
    assert_no_overlapping_labels(fig)


def test_speedup_and_lambda_figures_have_readable_labels(summary):
    cells, paired = summary
    for fig in (speedup_figure(paired), lambda_figure(cells)):
        assert fig is not None
        assert_no_overlapping_labels(fig)
    labels = [t.get_text() for t in speedup_figure(paired).axes[0].get_yticklabels()]
    assert len(set(labels)) == len(labels)  # every bar says which comparison it is


def test_a_smoke_run_says_it_is_not_a_measurement(tmp_path):
    config = run_config("ensemble=mixture")
    for seed in SEEDS:
        write_run(tmp_path / f"run{seed}", config, seed, 0.0)
    fig = accuracy_figure(group_cells(load_runs([tmp_path])[0]))
    assert any("not a measurement" in t.get_text() for t in texts(fig))
    assert not any(ax.get_xaxis().get_visible() and ax.axison for ax in fig.axes)  # no empty axes frame
