"""The one progress bar: counts what it is told, shows nothing when disabled or idle."""
from oirl_fast.progress import ProgressBar


def test_progress_bar_counts_and_notes():
    with ProgressBar("scoring", total=10, done=2) as bar:
        bar.advance(3)
        bar.advance(1, note="5 pairs/s")
        task = bar._bar.tasks[0]
        assert (task.completed, task.total, task.fields["note"]) == (6, 10, "5 pairs/s")


def test_progress_bar_disabled_or_empty_is_a_no_op():
    for bar in (ProgressBar("x", total=5, enabled=False), ProgressBar("x", total=0)):
        with bar:
            bar.advance(3, note="ignored")
        assert not bar.enabled and not hasattr(bar, "_bar")
    with ProgressBar("stream", total=None) as bar:  # unknown length still shows a bar
        bar.advance(7)
        assert bar._bar.tasks[0].completed == 7
