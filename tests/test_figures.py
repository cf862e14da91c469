"""Figures are shown once where they are drawn, in any backend, and leave matplotlib as found."""

import matplotlib as mpl
import pytest
from matplotlib import _pylab_helpers

from uniq.repro import figures as plots
from uniq.repro.data import finegrain


def _state() -> dict:
    # rcParams._get reads the backend without resolving it (resolving is itself a side effect)
    return {"rc": {k: v for k, v in mpl.rcParams.items() if k != "backend"},
            "backend": mpl.rcParams._get("backend"), "interactive": mpl.is_interactive(),
            "figures": _pylab_helpers.Gcf.get_num_fig_managers()}


@pytest.fixture
def shown(monkeypatch):
    """The displays a notebook kernel would receive, as (mime data, metadata)."""
    import IPython.display

    calls = []

    monkeypatch.setattr(IPython.display, "display", lambda obj, **kwargs: calls.append(obj))
    monkeypatch.setattr(plots, "in_notebook", lambda: True)
    return calls


@pytest.mark.parametrize("draw", [
    lambda: plots.transfer_curves(bits=2),
    lambda: plots.binary_and_activation_curves(),
    lambda: plots.distortion_curves((1, 2)),
    lambda: plots.data_samples(finegrain(200)),
])
def test_a_figure_is_shown_once_and_matplotlib_is_left_as_found(draw, shown, tmp_path):
    before = _state()
    fig = draw()
    assert shown == [] and _state() == before  # drawing alone shows nothing, changes nothing
    path = tmp_path / "figure.png"
    fig.savefig(path, dpi=plots.DPI, bbox_inches="tight")
    plots.show(fig, path)
    assert len(shown) == 1
    image = shown[0]
    assert image.data == path.read_bytes() and image.format == "png"  # the saved file itself
    assert image.metadata == {"uniq_figure": "figure.png"}
    assert _state() == before


def test_a_pyplot_figure_is_closed_after_it_is_shown(shown):
    """A figure made through pyplot (pandas' .plot, a user's plt.subplots) is shown once by
    ``show`` and closed, so the inline backend does not show it again at the end of the cell."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert plt.fignum_exists(fig.number)
    plots.show(fig)
    assert len(shown) == 1 and shown[0].data[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)


def test_outside_a_notebook_nothing_is_displayed(monkeypatch):
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: pytest.fail("displayed"))
    assert not plots.in_notebook()  # pytest is no Jupyter kernel
    plots.show(plots.step_gradient_curve(bits=1))


def test_save_figure_writes_the_file_and_shows_it(shown, tmp_path):
    import uniq.repro.study as E

    ctx = E.context("smoke", results_dir=str(tmp_path / "res"), runs_dir=str(tmp_path / "runs"))
    before = _state()
    path = E.save_figure(ctx, plots.transfer_curves(bits=2), "quantizers")
    assert path == tmp_path / "res" / "quantizers.png" and path.stat().st_size > 10_000
    assert [s.metadata["uniq_figure"] for s in shown] == ["quantizers.png"]
    assert shown[0].data == path.read_bytes()
    assert _state() == before
