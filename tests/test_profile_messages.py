"""training.profile_messages: every stage it reports is one a message goes through (a renamed function
would otherwise show as a stage taking no time)."""

from __future__ import annotations

from training.profile_messages import profile

# stages every message passes once; the others run for some messages (matching, encoding) or on misses
EVERY_MESSAGE = (
    "route handler (everything below)",
    "handle_message (all below)",
    "  served model lookup",
    "  conversation state: load",
    "  conversation state: save",
    "  conversation policy step (matching inside)",
    "  exchange log (buffered)",
    "  metrics (record_reply)",
)


def test_each_message_is_seen_in_every_stage_it_passes() -> None:
    n = 30
    wall, stages = profile(n, warm=5)
    by_label = {label.strip(): (ms, calls) for label, ms, calls in stages}
    assert wall > 0
    for label in EVERY_MESSAGE:
        ms, calls = by_label[label.strip()]
        assert calls >= n and ms > 0, (label, ms, calls)
    # matching ran for most of the demo mix, inside the policy step
    match_ms, match_calls = by_label["Matcher.match"]
    assert match_calls >= n // 2 and 0 < match_ms <= by_label["conversation policy step (matching inside)"][0]
