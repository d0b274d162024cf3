"""optimize/stats.py: counts made here and the store's sums add up to the shared figures, none lost or doubled
whatever happens to a batch on its way to the store."""

from __future__ import annotations

from dspy_pool.optimize.stats import ProgramStats
from dspy_pool.state import StatsCount


def _calls(stats: ProgramStats, with_stored: bool = True) -> dict:
    return {(view.version, view.arm): (view.calls, view.errors) for view in stats.view("qa", with_stored)}


def test_counts_are_shared_whether_pending_being_added_added_or_read_back():
    stats = ProgramStats()
    for failed in (False, True, False):
        stats.record("qa", 1, "base", 10.0, failed)
    assert _calls(stats) == {(1, "base"): (3, 1)}
    batch = stats.take_pending()
    assert batch.counts == [StatsCount("qa", 1, "base", calls=3, errors=1)]
    stats.record("qa", 1, "base", 10.0, False)  # while the batch is on its way
    assert _calls(stats) == {(1, "base"): (4, 1)}
    stats.added(succeeded=True)
    assert _calls(stats) == {(1, "base"): (4, 1)}
    stats.stored([StatsCount("qa", 1, "base", calls=3, errors=1), StatsCount("qa", 1, "base", calls=10)])  # + a replica's
    assert _calls(stats) == {(1, "base"): (14, 1)}


def test_a_batch_whose_outcome_is_unknown_is_offered_again_under_its_id():
    """A timeout may come after the store had the batch: it is sent again as it was, under the same id (the store
    adds an id once), never merged into the next one; counts made meanwhile wait for the batch after it."""
    stats = ProgramStats()
    stats.record("qa", 1, "base", 10.0, False)
    first = stats.take_pending()
    stats.added(succeeded=False)
    stats.record("qa", 1, "base", 10.0, True)
    assert _calls(stats) == {(1, "base"): (2, 1)}
    again = stats.take_pending()
    assert again == first
    stats.added(succeeded=True)
    later = stats.take_pending()
    assert later.id != first.id and later.counts == [StatsCount("qa", 1, "base", calls=1, errors=1)]


def test_a_peer_front_gets_only_what_is_not_in_the_store_yet():
    """A peer adds this front's not-yet-added counts to its own view, which has the store's sums already."""
    stats = ProgramStats()
    stats.stored([StatsCount("qa", 1, "base", calls=7)])
    stats.record("qa", 1, "base", 10.0, False)
    assert _calls(stats, with_stored=False) == {(1, "base"): (1, 0)}
    assert _calls(stats) == {(1, "base"): (8, 0)}


def test_feedback_is_per_version_and_examples_per_program():
    stats = ProgramStats()
    stats.stored([StatsCount("qa", 2, "", feedback_count=3, feedback_sum=1.5)])
    stats.record_feedback("qa", 2, 1.0, example_added=True)
    assert stats.feedback("qa", 2) == (4, 0.625)
    assert stats.feedback("qa", 2, with_stored=False) == (1, 1.0)
    assert stats.examples("qa") == 1
    stats.stored([StatsCount("qa", 0, "", feedback_examples=4)])  # other fronts' and replicas', and from before a restart
    assert stats.examples("qa") == 5
    assert _calls(stats) == {}  # feedback rows are not arms


def test_figures_from_before_a_restart_show_without_latencies_and_are_not_exported_as_this_process_counts():
    stats = ProgramStats()
    stats.stored([StatsCount("qa", 1, "base", calls=5, errors=1)])
    [view] = stats.view("qa")
    assert (view.calls, view.errors, view.p50_ms) == (5, 1, 0.0)
    assert stats.all() == {}  # Prometheus counters are per process
    assert stats.recent("qa", 1) == (0, 0.0)  # what the version does now: nothing served here yet


def test_the_recent_error_rate_forgets_an_outage_long_past():
    """The error-rate trigger reads the last calls served here, not the version's whole life."""
    stats = ProgramStats()
    stats.stored([StatsCount("qa", 1, "traditional", calls=1000, errors=600)])  # an old outage, in the sums
    for failed in [True] * 10 + [False] * 1000:
        stats.record("qa", 1, "traditional", 10.0, failed)
    assert stats.recent("qa", 1) == (1000, 0.0)  # the window holds the last 1,000 calls
    assert _calls(stats) == {(1, "traditional"): (2010, 610)}


def test_forget_drops_a_versions_figures_everywhere():
    stats = ProgramStats()
    stats.stored([StatsCount("qa", 1, "base", calls=5), StatsCount("qa", 2, "base", calls=1)])
    stats.record("qa", 1, "base", 10.0, False)
    stats.record_feedback("qa", 1, 0.5, example_added=True)
    stats.forget("qa", [1])
    assert _calls(stats) == {(2, "base"): (1, 0)}
    assert stats.feedback("qa", 1) == (0, 0.0)
    assert [c.version for c in stats.take_pending().counts] == [0]  # the program's feedback examples stay
