"""Several questions in one message, and the personal data around a question, taken apart.

"能开专票吗？顺便问下几天能到" holds two questions; "我电话[手机号]，地址[地址]，能开专票吗" holds one, beside
contact details that only drown it. `split_questions` works on masked text (api.dialog.privacy): it cuts at
sentence punctuation and at the words customers use to add a question (顺便问下, 还有, 另外 ...), cuts at a
comma only after a clause that is itself a question (…吗，…), and drops clauses that hold nothing but
personal data and its labels.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[？?！!。；;\n\r]+")
# a link pasted into a message: its "?" and "," are no sentence punctuation (item.jd.com/1.html?cover=1).
# It ends at a space or the first character no URL holds (a Chinese question typed right after it).
_LINK = re.compile(r"(?:https?://|www\.|(?<![A-Za-z0-9.\-])(?:[A-Za-z0-9\-]+\.)+(?:com|cn|hk|net)/)[!-~]*")
_HELD = re.compile(r"\x00(\d+)\x00")
_CONNECTORS = re.compile(
    r"(?:顺便(?:再)?问(?:一)?下|顺便问问|顺便问|顺便|另外(?:再)?问(?:一)?下|另外|还有(?:就是)?|还想问(?:一)?下|"
    r"还想问|再问(?:一)?下|再问问|对了|以及|然后(?:再)?问(?:一)?下)"
)
_COMMA = re.compile(r"[，,、]+")
_QUESTION_END = re.compile(r"(?:吗|呢|么|嘛|没|不|多少|几天|多久|怎么样|怎么办|如何|哪里|什么|啥)\s*$")
# contact details and the words that introduce them ("我的手机号是[手机号]", "地址：[地址]"); an order
# number is kept: it is what an order question is about
_PII_MENTION = re.compile(
    r"(?:我的|我)?(?:电话号码|电话|手机号码|手机号|手机|号码|联系方式|收货地址|收件地址|地址|邮箱|身份证号?|"
    r"银行卡号?|收货人|收件人)?(?:是|为)?[:：]?\s*\[(?:手机号|电话|地址|邮箱|身份证号|银行卡号)\]"
)
_LEFTOVER = re.compile(r"^[\s，,、:：]*(?:我的|我|联系方式|收货人|收件人)?[\s，,、:：]*$")


def _without_pii(clause: str) -> str:
    """The clause without contact details; "" when nothing else was in it."""
    rest = _PII_MENTION.sub(" ", clause)
    return "" if _LEFTOVER.match(rest) else re.sub(r"\s+", " ", rest).strip(" ，,、:：")


def _comma_parts(sentence: str) -> list[str]:
    """Cut a sentence at commas only where the clause before is a question of its own."""
    parts: list[str] = []
    current = ""
    for piece in _COMMA.split(sentence):
        piece = _without_pii(piece)
        if not piece:
            continue
        current = f"{current}，{piece}" if current else piece
        if _QUESTION_END.search(current):
            parts.append(current)
            current = ""
    if current:
        parts.append(current)
    return parts


def split_questions(masked: str, max_parts: int = 3) -> list[str]:
    """The questions of a masked message, in order, without personal-data clauses; [] when none is left.

    At most `max_parts` are returned; the last one keeps whatever follows.
    """
    links: list[str] = []

    def hold(m: re.Match[str]) -> str:
        links.append(m.group())
        return f"\x00{len(links) - 1}\x00"

    masked = _LINK.sub(hold, masked)
    clauses: list[str] = []
    for sentence in _SENTENCE_END.split(masked):
        for chunk in _CONNECTORS.split(sentence):
            for clause in _comma_parts(chunk):
                clause = clause.strip(" ，,、:：")
                if clause and any(c.isalnum() for c in clause):  # "..." or "~~" asks nothing
                    clauses.append(clause)
    if len(clauses) > max_parts:
        clauses = [*clauses[: max_parts - 1], "，".join(clauses[max_parts - 1 :])]
    return [_HELD.sub(lambda m: links[int(m.group(1))], c) for c in clauses]
