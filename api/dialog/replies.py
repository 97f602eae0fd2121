"""What the bot says to what is not a KB question: small talk, non-text messages, bare contact details.

Each shop may switch a small-talk intent off (its messages are then matched like any other) or word its
reply; the defaults below are what a new shop gets. Settings live in the shop's `settings["smalltalk"]`
as {intent: {"enabled": bool, "reply": str | None}} and `settings["non_text"]` ("ask" or "handoff").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.smalltalk import INTENTS

DEFAULT_REPLIES: dict[str, str] = {
    "greeting": "您好，欢迎光临！请问有什么可以帮您？",
    "thanks": "不客气，很高兴为您服务！还有其他问题随时找我哦。",
    "goodbye": "感谢您的光临，祝您生活愉快，再见！",
    "ack": "好的，请问还有什么可以帮您？",
    "robot": "我是本店的智能客服，常见问题可以马上为您解答；需要人工客服时，回复“转人工”即可。",
    "praise": "谢谢您的认可，我们会继续努力的！",
    "venting": "非常抱歉给您带来不好的体验，请告诉我具体遇到了什么问题，我会尽力帮您解决。",
}
# replies that are not an intent of their own
ACK_AFTER_ANSWER = "好的，如果还有其他问题，随时告诉我哦。"
NON_TEXT = "亲，目前我只能看懂文字消息哦，麻烦您用文字描述一下问题～"
CONTACT_ONLY = "收到您的信息了，请问有什么可以帮您？"

NonText = Literal["ask", "handoff"]


@dataclass(frozen=True)
class Replies:
    """A shop's small-talk and non-text behaviour, resolved against the defaults."""

    enabled: frozenset[str] = frozenset(INTENTS)
    texts: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_REPLIES))
    ack_after_answer: str = ACK_AFTER_ANSWER
    non_text: NonText = "ask"
    non_text_reply: str = NON_TEXT
    contact_only: str = CONTACT_ONLY

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> Replies:
        """The shop's settings over the defaults; unknown intents and empty replies are ignored."""
        settings = settings or {}
        smalltalk = settings.get("smalltalk") or {}
        texts = dict(DEFAULT_REPLIES)
        enabled = set(INTENTS)
        for intent, conf in smalltalk.items():
            if intent not in texts or not isinstance(conf, Mapping):
                continue
            if conf.get("enabled") is False:
                enabled.discard(intent)
            if conf.get("reply"):
                texts[intent] = str(conf["reply"])
        non_text = settings.get("non_text") or "ask"
        return cls(
            enabled=frozenset(enabled),
            texts=texts,
            non_text="handoff" if non_text == "handoff" else "ask",
            non_text_reply=str(settings.get("non_text_reply") or NON_TEXT),
        )

    def text(self, intent: str, after_answer: bool = False) -> str:
        if intent == "ack" and after_answer and self.texts["ack"] == DEFAULT_REPLIES["ack"]:
            return self.ack_after_answer
        return self.texts.get(intent) or DEFAULT_REPLIES[intent]
