"""JD's customer-service (咚咚) JOS methods, described once: name, setting, request fields, answer fields.

The names and request fields are those public JOS SDKs send for a POP merchant's customer-service
integration. Each method's name is configuration (KEFU_<SETTING>, defaulting to JD's name), so an app type
that exposes another name is a setting, and a field JD renames is a one-line change here. Answers are read
tolerantly (api.jd.records): the records are the first list of objects in the result, and each field is
looked up under the names listed in `fields`, JD's name first.

The order, logistics and refund methods used by dynamic KB entries are described in api.jd.orders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CsMethod:
    """One JOS method: its default name, the setting that overrides it, what it is sent, what it answers."""

    name: str
    setting: str  # attribute of api.settings.Settings (env KEFU_<SETTING>)
    params: tuple[str, ...]  # business parameters, as the public SDKs name them
    purpose: str
    # answer field -> the names JD uses for it, JD's name first
    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    paged: bool = False

    def request(self, **values: Any) -> dict[str, Any]:
        """The business parameters of a call; a value for a field the method does not take is a bug."""
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            raise ValueError(f"{self.name} takes no {', '.join(unknown)} (it takes {', '.join(self.params)})")
        return {k: v for k, v in values.items() if v is not None}

    def configured_name(self, settings: Any) -> str:
        """The method name the service calls: the setting when set, else JD's name."""
        return str(getattr(settings, self.setting, None) or self.name)


_WINDOW = ("waiter", "startTime", "endTime")
_PAGED = (*_WINDOW, "page", "pageSize")

EVALUATION_LIST = CsMethod(
    "jingdong.im.pop.evaluationlist.get",
    "jos_evaluation_method",
    _PAGED,
    "customers' evaluations of customer service (评价详情, 分数, 时间)",
    {
        "id": ("id", "evaluationId", "evaluation_id", "commentId", "evaId"),
        "score": ("score", "evaluationScore", "grade", "star", "分数"),
        "content": ("content", "evaluationContent", "detail", "comment", "评价详情"),
        "time": ("time", "evaluationTime", "createTime", "create_time", "created", "evaluateTime", "时间"),
        "customer": ("customer", "customerPin", "pin", "buyerPin", "fromPin"),
        "waiter": ("waiter", "waiterPin", "venderWaiter"),
        "session": ("sid", "sessionId", "session_id"),
    },
    paged=True,
)
EVALUATION_STAT = CsMethod(
    "jingdong.im.pop.evaluationstat.get",
    "jos_evaluation_stat_method",
    _WINDOW,
    "statistics of the evaluations in a time window",
    {
        "total": ("total", "evaluationNum", "count"),
        "satisfied": ("satisfiedNum", "satisfied", "goodNum"),
        "dissatisfied": ("dissatisfiedNum", "dissatisfied", "badNum"),
        "average": ("avgScore", "averageScore", "average"),
    },
)
CHAT_LOG = CsMethod(
    "jingdong.im.pop.chatlog.get",
    "jos_chatlog_method",
    ("waiter", "customer", "skuId", "startTime", "endTime", "page", "pageSize"),
    "the messages of chats",
    {
        "id": ("msgId", "id", "messageId"),
        "session": ("sid", "sessionId"),
        "from": ("fromPin", "from", "sender"),
        "to": ("toPin", "to", "receiver"),
        "content": ("content", "msg", "message"),
        "time": ("time", "msgTime", "createTime"),
        "waiter": ("waiter", "waiterPin"),
        "customer": ("customer", "customerPin"),
    },
    paged=True,
)
SESSION_LIST = CsMethod(
    "jingdong.im.pop.sessionlist.get",
    "jos_sessionlist_method",
    _PAGED,
    "chat sessions",
    {
        "session": ("sid", "sessionId"),
        "customer": ("customer", "customerPin"),
        "waiter": ("waiter", "waiterPin"),
        "start": ("startTime", "beginTime"),
        "end": ("endTime", "closeTime"),
    },
    paged=True,
)
UNREPLY_STAT = CsMethod(
    "jingdong.im.pop.unreplystat.get",
    "jos_unreply_method",
    _WINDOW,
    "sessions left unreplied",
    {"unreplied": ("unReplyNum", "unreplyNum", "unreplied"), "date": ("date", "day")},
)
AVG_WAIT = CsMethod(
    "jingdong.im.pop.consult.avgwaittime.get",
    "jos_avgwait_method",
    ("waiter", "date"),
    "average wait before an agent's first reply",
    {"seconds": ("avgWaitTime", "avgWait", "waitTime"), "date": ("date", "day")},
)
ASK_RATE = CsMethod(
    "jingdong.im.pop.askRate.get",
    "jos_askrate_method",
    ("startTime", "endTime"),
    "share of visitors who ask customer service (咨询率)",
    {"rate": ("askRate", "rate"), "date": ("date", "day")},
)
WAITER_ONLINE = CsMethod(
    "jingdong.im.pop.waiter.onlinetime.stat.get",
    "jos_online_method",
    _WINDOW,
    "agents' online time",
    {"seconds": ("onlineTime", "onlineSeconds"), "waiter": ("waiter", "waiterPin"), "date": ("date", "day")},
)
GROUP_INFO = CsMethod(
    "jingdong.im.pop.groupinfo.get",
    "jos_groupinfo_method",
    (),
    "the shop's agent groups",
    {"group": ("groupId", "id"), "name": ("groupName", "name"), "waiters": ("waiters", "members")},
)
CHAT_PUSH = CsMethod(
    "jingdong.dongdong.packet.josChatMessage.push",
    "jos_chat_push_method",
    # the public SDKs really call them param1 and param2: two JSON objects, described below
    ("param1", "param2"),
    "sends a chat message to a customer (async replies, api.jd.outbound)",
)
# CHAT_PUSH's objects as the public SDKs build them: their Java type (sent as "@type", as the PHP SDK does)
# and their fields. api.jd.outbound fills them by these names: a field JD renames is a one-line change here.
CHAT_PUSH_ACCESS = ("param1", "com.jd.dd.open.gw.api.domain.AccessSignature")
CHAT_PUSH_ACCESS_FIELDS = ("accessid", "aspid", "source", "accessToken", "version")
CHAT_PUSH_MESSAGE = ("param2", "com.jd.dd.open.gw.api.domain.jos.ChatMessageJos")
CHAT_PUSH_MESSAGE_FIELDS = (
    "upid",  # the message's unique id: JD drops a second message with the same upid
    "ver",
    "fromApp",
    "fromClientType",
    "fromPin",  # the shop's waiter (bot) account
    "toApp",
    "toClientType",
    "toPin",  # the customer
    "body",  # the text
    "open_id_buyer",
    "xid_buyer",
)

METHODS = (
    EVALUATION_LIST,
    EVALUATION_STAT,
    CHAT_LOG,
    SESSION_LIST,
    UNREPLY_STAT,
    AVG_WAIT,
    ASK_RATE,
    WAITER_ONLINE,
    GROUP_INFO,
    CHAT_PUSH,
)


def field_value(record: Mapping[str, Any], method: CsMethod, name: str) -> Any:
    """A record's value for one of the method's answer fields, under whichever name JD used."""
    return next((record[k] for k in method.fields[name] if record.get(k) not in (None, "")), None)


def fields_of(result: Any, method: CsMethod) -> dict[str, Any]:
    """The method's fields from the first object (breadth first) of an answer that has any of them
    (statistics come as one object, wrapped differently by each method)."""
    names = {k for keys in method.fields.values() for k in keys}
    queue = [result]
    while queue:
        node = queue.pop(0)
        if isinstance(node, dict):
            if names & node.keys():
                return {f: field_value(node, method, f) for f in method.fields}
            queue.extend(node.values())
        elif isinstance(node, list):
            queue.extend(node)
    return dict.fromkeys(method.fields)
