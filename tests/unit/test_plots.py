"""plots: the figures people look at show what the numbers say, at the edges too."""

from __future__ import annotations

import ferops.plots as plots


def _figure_of(monkeypatch, draw):
    """Call `draw(path)` and return the figure it would have saved (drawn, not yet closed)."""
    seen = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: seen.append(fig) or path)
    draw("unused.png")
    (fig,) = seen
    fig.canvas.draw()
    return fig


def test_training_curves_of_a_one_epoch_run_show_their_points_at_epoch_1(monkeypatch):
    history = {"loss": [1.2], "val_loss": [1.3], "accuracy": [0.4], "val_accuracy": [0.35], "learning_rate": [1e-3]}
    fig = _figure_of(monkeypatch, lambda p: plots.training_curves(history, p, title="one epoch"))
    try:
        lines = [line for ax in fig.axes for line in ax.get_lines()]
        assert len(lines) == 5
        # a lone point drawn as a line alone is invisible: it needs a marker
        assert all(line.get_marker() not in (None, "", "None", " ") for line in lines)
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            assert [t for t in ax.get_xticks() if lo <= t <= hi] == [1.0]  # not 0.945, 0.96 … 1.05
    finally:
        plots.pyplot().close(fig)


def test_training_curves_of_longer_runs_stay_plain_lines(monkeypatch):
    history = {"loss": [1.2, 1.0, 0.9], "val_loss": [1.3, 1.1, 1.0], "accuracy": [0.4, 0.5, 0.55],
               "val_accuracy": [0.35, 0.45, 0.5]}
    fig = _figure_of(monkeypatch, lambda p: plots.training_curves(history, p))
    try:
        assert all(line.get_marker() in (None, "", "None") for ax in fig.axes for line in ax.get_lines())
        lo, hi = fig.axes[0].get_xlim()
        assert [t for t in fig.axes[0].get_xticks() if lo <= t <= hi] == [1.0, 2.0, 3.0]
    finally:
        plots.pyplot().close(fig)
