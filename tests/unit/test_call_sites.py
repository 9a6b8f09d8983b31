"""Call sites: each distinct place in the user's code is named to the scheduler once."""

from __future__ import annotations

import taskgraph._call_sites as call_sites
from taskgraph import _wire as w
from taskgraph._call_sites import CallSites


def test_each_site_is_named_once_and_then_only_numbered():
    sent: list[w.Msg] = []
    sites = CallSites(sent.append)
    numbers = []
    for _ in range(3):
        numbers.append(sites.here())  # one line: one site
    other = sites.here()
    assert numbers == [1, 1, 1] and other == 2
    assert [(m.number, m.text.rsplit(":", 2)[1:]) for m in sent] == [
        (1, ["test_each_site_is_named_once_and_then_only_numbered", str(numbers_line())]),
        (2, ["test_each_site_is_named_once_and_then_only_numbered", str(numbers_line() + 1)]),
    ]
    assert sent[0].text.startswith(__file__)


def numbers_line() -> int:
    import inspect

    source, start = inspect.getsourcelines(test_each_site_is_named_once_and_then_only_numbered)
    return start + next(i for i, text in enumerate(source) if "numbers.append" in text)


def test_past_the_limit_a_new_site_is_not_named(monkeypatch):
    monkeypatch.setattr(call_sites, "MAX_SITES", 1)
    sent: list[w.Msg] = []
    sites = CallSites(sent.append)
    first = sites.here()
    assert sites.here() == 0 and first == 1 and len(sent) == 1
