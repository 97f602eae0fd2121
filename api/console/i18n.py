"""The console's words in Chinese (the default) and English: one table, one lookup.

The language is the `kefu_lang` cookie (set by the toggle in the header), else Chinese. A key missing
from the table is a bug (tests/test_console.py checks every key the templates and routes use); it shows
as the key itself rather than failing the page.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

LANGS = {"zh": "zh-CN", "en": "en"}  # the console's languages and their HTML lang codes
DEFAULT = "zh"

TABLE: dict[str, tuple[str, str]] = {
    # layout
    "app.name": ("客服机器人控制台", "Kefu console"),
    "app.skip": ("跳到正文", "Skip to content"),
    "app.nav": ("主导航", "Main navigation"),
    "app.shop": ("店铺", "Shop"),
    "app.logout": ("退出登录", "Log out"),
    "page.login": ("登录", "Log in"),
    "page.try": ("试一试", "Try"),
    "page.kb": ("知识库", "Knowledge base"),
    "page.kb-entry": ("编辑问答", "Edit entry"),
    "page.kb-upload": ("上传知识库", "Upload a knowledge base"),
    "page.kb-diff": ("与线上版本对比", "Changes against the live version"),
    "page.kb-versions": ("版本", "Versions"),
    "page.kb-publish": ("发布", "Publish"),
    "page.conversations": ("会话记录", "Conversations"),
    "page.unanswered": ("未解决的问题", "Unanswered"),
    "page.quality": ("质量", "Quality"),
    "page.settings": ("设置", "Settings"),
    "page.error": ("出错了", "Something went wrong"),
    # login
    "login.shop": ("店铺 ID", "Shop id"),
    "login.secret": ("API 密钥或控制台密码", "API key or console password"),
    "login.hint": (
        "使用店铺的 API 密钥，或运营人员为您设置的控制台密码。",
        "Use the shop's API key, or the console password the operator set for you.",
    ),
    "login.submit": ("登录", "Log in"),
    "login.failed": ("店铺 ID 或密码不正确。", "Wrong shop id or password."),
    "login.limited": ("登录失败次数过多，请稍后再试。", "Too many failed logins; try again later."),
    "login.expired": ("登录表单已过期，请重新提交。", "The login form expired; please submit it again."),
    # modes and decisions
    "mode.auto": ("自动", "Auto"),
    "mode.assist": ("辅助", "Assist"),
    "mode.off": ("关闭", "Off"),
    "mode.auto.hint": ("机器人直接回复顾客。", "The bot answers customers."),
    "mode.assist.hint": ("只给人工客服推荐答案。", "The bot only suggests answers to your agents."),
    "mode.off.hint": ("所有消息转人工。", "Every message goes to a person."),
    "decision.answer": ("回答", "Answer"),
    "decision.clarify": ("澄清", "Clarify"),
    "decision.handoff": ("转人工", "Handoff"),
    "decision.smalltalk": ("寒暄", "Small talk"),
    "decision.assist": ("辅助", "Assist"),
    # try
    "try.intro": (
        "像顾客一样输入消息，查看机器人的决定、回复、候选问题及其分数，以及原因。",
        "Type a message as a customer would, and see the decision, the answer, the top candidates with "
        "scores, and why.",
    ),
    "try.messages": ("顾客消息", "Customer message"),
    "try.messages_hint": (
        "每行一条消息；多行即为一段对话。",
        "One message a line; several lines are one conversation.",
    ),
    "try.submit": ("发送", "Send"),
    "try.mode_now": ("当前模式", "Mode now"),
    "try.turn": ("第 {n} 条", "Message {n}"),
    "try.decision": ("决定", "Decision"),
    "try.reply": ("回复", "Reply"),
    "try.options": ("提供的选项", "Options offered"),
    "try.entry": ("问答条目", "Entry"),
    "try.confidence": ("置信度", "Confidence"),
    "try.why": ("原因", "Why"),
    "try.version": ("模型版本", "Model version"),
    "try.candidates": ("候选问题（单条消息的匹配）", "Top candidates (this message on its own)"),
    "try.score": ("分数", "Score"),
    "try.p_right": ("正确概率", "P(right)"),
    "try.right_entry": ("回答错了？正确的条目：", "Wrong answer? The right entry:"),
    "try.choose": ("— 请选择 —", "— choose —"),
    "try.none_right": ("都不对（知识库里没有）", "None (not in the knowledge base)"),
    "try.flag": ("标记为错误", "Flag as wrong"),
    "try.flagged": ("已记录：正确条目是 {entry}。", "Stored: the right entry is {entry}."),
    "try.flagged_oos": ("已记录：知识库里没有正确答案。", "Stored: no entry was right."),
    "try.pick_entry": ("请选择正确的条目。", "Pick the right entry."),
    "try.no_exchange": ("没有这条记录。", "No such exchange."),
    "try.empty": ("请输入至少一条消息。", "Type at least one message."),
    "try.too_long": (
        "最多 {turns} 条消息，每条最多 {chars} 个字。",
        "At most {turns} messages of at most {chars} characters.",
    ),
    # settings
    "settings.mode": ("机器人模式", "Bot mode"),
    "settings.save_mode": ("保存模式", "Save mode"),
    "settings.bad_mode": ("请选择一个模式。", "Choose a mode."),
    "settings.saved_mode": ("模式已改为：{mode}。", "The mode is now: {mode}."),
    "settings.engine": ("回答策略", "Answering"),
    "settings.engine_hint": (
        "目标准确率和转人工用语在下次发布后生效；寒暄回复立即生效。",
        "The target precision and handoff phrases apply from the next publish; small-talk replies at once.",
    ),
    "settings.target": ("目标准确率", "Target precision"),
    "settings.threshold": ("回答阈值", "Answer threshold"),
    "settings.coverage": ("可自动回答的比例", "Share answered"),
    "settings.curve": (
        "上次评估（版本 {version}）：各目标准确率下可自动回答的比例",
        "Last evaluation (version {version}): the share answered at each target precision",
    ),
    "settings.last_eval": (
        "上次评估（版本 {version}）：目标 {target} 时可自动回答 {coverage}。",
        "Last evaluation (version {version}): at target {target}, {coverage} answered.",
    ),
    "settings.no_model": ("还没有发布的版本，发布后可看到评估。", "No published version yet."),
    "settings.phrases": ("转人工用语（每行一个）", "Handoff phrases (one a line)"),
    "settings.phrases_hint": ("留空则使用默认：", "Leave empty for the defaults:"),
    "settings.smalltalk": ("寒暄回复", "Small-talk replies"),
    "settings.intent": ("类型", "Intent"),
    "settings.enabled": ("启用", "On"),
    "settings.reply": ("回复（留空用默认）", "Reply (empty: the default)"),
    "settings.save_engine": ("保存回答策略", "Save answering"),
    "settings.saved_engine": ("回答策略已保存。", "Answering settings saved."),
    "settings.invalid": ("设置有误，未保存：", "The settings have problems; nothing was saved:"),
    "settings.jd": ("京东开放平台凭证", "JD open platform credentials"),
    "settings.stored": ("已保存", "Stored"),
    "settings.none": ("无", "none"),
    "settings.secret_hint": (
        "密钥只写不读；留空则保留已保存的密钥。",
        "The secret is write-only; leave it empty to keep the stored one.",
    ),
    "settings.save_jd": ("保存凭证", "Save credentials"),
    "settings.saved_jd": ("凭证已保存。", "Credentials saved."),
    "settings.no_secret_key": (
        "服务未配置 KEFU_SECRET_KEY，无法保存京东凭证。",
        "The service has no KEFU_SECRET_KEY: JD credentials cannot be stored.",
    ),
    "settings.jd_key_needed": ("请填写 AppKey。", "Enter the AppKey."),
    "settings.jd_secret_needed": ("请填写 AppSecret。", "Enter the AppSecret."),
    "settings.jd_too_long": ("凭证过长或含有非法字符。", "A credential is too long or has a NUL."),
    "intent.greeting": ("问候", "Greeting"),
    "intent.thanks": ("感谢", "Thanks"),
    "intent.goodbye": ("告别", "Goodbye"),
    "intent.ack": ("确认", "Acknowledgement"),
    "intent.robot": ("问是不是机器人", "Asks if a robot"),
    "intent.praise": ("表扬", "Praise"),
    "intent.venting": ("抱怨", "Venting"),
    # knowledge base
    "kb.id": ("ID", "Id"),
    "kb.question": ("标准问题", "Question"),
    "kb.actions": ("知识库操作", "Knowledge base actions"),
    "kb.browse": ("浏览", "Browse"),
    "kb.add": ("新增问答", "Add an entry"),
    "kb.upload": ("上传文件", "Upload a file"),
    "kb.diff": ("与线上版本对比", "Changes against live"),
    "kb.versions": ("版本", "Versions"),
    "kb.export_draft": ("导出编辑中的知识库（XLSX）", "Export the draft (XLSX)"),
    "kb.publish": ("发布", "Publish"),
    "kb.search": ("搜索", "Search"),
    "kb.search_go": ("搜索", "Search"),
    "kb.count": ("显示 {found} 条，共 {total} 条。", "{found} shown of {total}."),
    "kb.similar": ("相似问法", "Paraphrases"),
    "kb.similar_lines": ("相似问法（每行一个）", "Paraphrases (one a line)"),
    "kb.answer": ("答案", "Answer"),
    "kb.category": ("分类", "Category"),
    "kb.enabled": ("启用", "Enabled"),
    "kb.edit": ("编辑", "Edit"),
    "kb.yes": ("是", "yes"),
    "kb.no": ("否", "no"),
    "kb.more": ("还有 {n} 个", "{n} more"),
    "kb.pages": ("分页", "Pages"),
    "kb.prev": ("上一页", "Previous"),
    "kb.next": ("下一页", "Next"),
    "kb.page_of": ("第 {page} / {pages} 页", "Page {page} of {pages}"),
    "kb.save": ("保存", "Save"),
    "kb.saved": ("已保存到编辑中的知识库；发布后生效。", "Saved to the draft; it serves once published."),
    "kb.delete": ("删除此条目", "Delete this entry"),
    "kb.no_entry": ("没有条目 {id}。", "No entry {id}."),
    "kb.id_taken": ("ID {id} 已存在。", "Id {id} exists already."),
    "kb.issues": ("发现 {n} 个问题，未做任何更改：", "{n} problem(s); nothing was changed:"),
    "kb.source": ("文件", "File"),
    "kb.row": ("行", "Row"),
    "kb.column": ("列", "Column"),
    "kb.problem": ("问题", "Problem"),
    "kb.file": ("知识库文件", "Knowledge base file"),
    "kb.file_hint": (
        "Excel（.xlsx）、CSV、JSON 或 JSONL；列：id、question、similar、answer……"
        "上传会替换编辑中的知识库，发布前不影响线上。",
        "Excel (.xlsx), CSV, JSON or JSONL; columns id, question, similar, answer ... An upload replaces "
        "the draft; nothing changes live until you publish.",
    ),
    "kb.upload_go": ("上传", "Upload"),
    "kb.no_file": ("请选择一个文件。", "Choose a file."),
    "kb.upload_refused": (
        "{name} 有问题，未保存。请修改后重新上传。",
        "{name} has problems; nothing was stored.",
    ),
    "kb.uploaded": (
        "已上传 {n} 条；下面是与线上版本的差异。",
        "{n} entries uploaded; the changes against live:",
    ),
    "kb.diff_against": (
        "编辑中的知识库与线上版本 {version} 的差异：",
        "The draft against live version {version}:",
    ),
    "kb.diff_no_live": ("还没有线上版本：全部为新增。", "Nothing is live yet: everything is new."),
    "kb.diff_added": ("新增 {n} 条", "{n} added"),
    "kb.diff_changed": ("修改 {n} 条", "{n} changed"),
    "kb.diff_removed": ("删除 {n} 条", "{n} removed"),
    "kb.diff_unchanged": ("未变 {n} 条", "{n} unchanged"),
    "kb.change": ("变化", "Change"),
    "kb.field": ("字段", "Field"),
    "kb.live": ("线上", "Live"),
    "kb.draft": ("编辑中", "Draft"),
    "kb.added": ("新增", "Added"),
    "kb.changed": ("修改", "Changed"),
    "kb.removed": ("删除", "Removed"),
    "kb.cannot_publish": (
        "编辑中的知识库有问题，无法发布。",
        "The draft has problems and cannot be published.",
    ),
    "kb.no_version": ("没有版本 {version}。", "No version {version}."),
    "kb.not_ready": ("版本 {version} 未就绪，不能回滚到它。", "Version {version} is not ready."),
    "kb.building_version": ("版本 {version}", "Version {version}"),
    "kb.reused": ("与已有版本相同，未重新构建", "same as an existing version: not built again"),
    "kb.progress": ("构建进度", "Build progress"),
    "kb.status": ("状态", "Status"),
    "kb.build_ready": (
        "版本 {version} 已上线（{entries} 条）。",
        "Version {version} is live ({entries} entries).",
    ),
    "kb.build_not_served": ("正在加载……", "Loading ..."),
    "kb.build_failed": ("构建失败：{error}", "The build failed: {error}"),
    "kb.build_superseded": ("已被更新的版本取代：{error}", "Superseded: {error}"),
    "kb.version": ("版本", "Version"),
    "kb.entries": ("条目数", "Entries"),
    "kb.published_at": ("发布时间（UTC）", "Published (UTC)"),
    "kb.figures": ("评估", "Evaluation"),
    "kb.export": ("导出", "Export"),
    "kb.export_version": ("导出版本 {version}（XLSX）", "Export version {version} (XLSX)"),
    "kb.rollback": ("回滚", "Roll back"),
    "kb.rollback_to": ("回滚到版本 {version}", "Roll back to version {version}"),
    "kb.rolled_back": ("已回滚到版本 {version}。", "Rolled back to version {version}."),
    "kb.live_now": ("线上", "live"),
    "kb.self_recall": ("自检召回 {value}", "self-check recall {value}"),
    "kb.conflict": (
        "编辑中的知识库有未发布的修改。回滚到版本 {version} 时：",
        "The draft has unpublished edits. Rolling back to version {version}:",
    ),
    "kb.rollback_discard": ("放弃这些修改并回滚", "Discard them and roll back"),
    "kb.rollback_keep": (
        "保留编辑中的知识库，只回滚线上模型",
        "Keep the draft, roll back the live model only",
    ),
    "status.building": ("构建中", "Building"),
    "status.ready": ("就绪", "Ready"),
    "status.failed": ("失败", "Failed"),
    "status.superseded": ("已取代", "Superseded"),
    "stage.tokenize": ("分词", "Tokenizing"),
    "stage.embed": ("计算向量", "Embedding"),
    "stage.classifier": ("训练分类器", "Training the classifier"),
    "stage.calibrate": ("校准阈值", "Calibrating thresholds"),
    "stage.follow-ups": ("校准追问", "Calibrating follow-ups"),
    "stage.done": ("构建完成", "Built"),
    "stage.evaluate": ("评估", "Evaluating"),
    "stage.save": ("保存", "Saving"),
    "field.question": ("标准问题", "Question"),
    "field.similar": ("相似问法", "Paraphrases"),
    "field.answer": ("答案", "Answer"),
    "field.category": ("分类", "Category"),
    "field.enabled": ("启用", "Enabled"),
    "field.valid_from": ("生效时间", "Valid from"),
    "field.valid_to": ("失效时间", "Valid to"),
    "field.action": ("动态查询", "Lookup"),
    "field.notify": ("通知客服", "Notify agents"),
}


def lang_of(request: Request) -> str:
    lang = request.cookies.get("kefu_lang", DEFAULT)
    return lang if lang in LANGS else DEFAULT


class Translator:
    """`t("key", n=3)`: the key's text in the language, with {placeholders} filled in."""

    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in LANGS else DEFAULT
        self._i = 0 if self.lang == "zh" else 1

    def __call__(self, key: str, **values: Any) -> str:
        texts = TABLE.get(key)
        if texts is None:
            return key
        text = texts[self._i]
        return text.format(**values) if values else text
