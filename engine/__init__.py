"""Kefu: retrieval-based intent matching for JD merchants' customer service.

>>> from engine import Matcher
>>> m = Matcher.build("shop_kb.xlsx")
>>> r = m.match("笔记本能开专票吗")
>>> r.decision, r.entry_id, r.confidence
"""

from engine.kb import KBEntry, KBIssue, KBValidationError, load_kb
from engine.matcher import Matcher
from engine.results import Candidate, Decision, MatchResult

__all__ = [
    "Candidate",
    "Decision",
    "KBEntry",
    "KBIssue",
    "KBValidationError",
    "MatchResult",
    "Matcher",
    "load_kb",
]
__version__ = "0.1.0"
