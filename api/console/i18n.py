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
    "kb.warnings": (
        "文件已读取，但有 {n} 处需要您检查：",
        "{n} warning(s): the file loaded, but these deserve a look:",
    ),
    "kb.warning": ("提示", "Warning"),
    "kb.warnings_more": ("另有 {n} 条提示未列出。", "{n} more warning(s) not listed."),
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
    "kb.build_activating": (
        "版本 {version} 已构建完成（{entries} 条），正在启用……",
        "Version {version} is built ({entries} entries); activating ...",
    ),
    "kb.build_inactive": (
        "版本 {version} 已构建完成（{entries} 条），但没有启用：线上仍是{live}。",
        "Version {version} is built ({entries} entries) but not active: {live} stays live.",
    ),
    "kb.live_version": ("版本 {version}", "version {version}"),
    "kb.no_live_version": ("没有版本", "no version"),
    "kb.not_activated": (
        "构建期间您回滚到了其他版本，所以它没有自动启用；需要时可启用它。",
        "You rolled back while it was building, so it was not activated; activate it to serve it.",
    ),
    "kb.build_failed": ("构建失败：{error}", "The build failed: {error}"),
    "kb.build_superseded": ("已被更新的版本取代：{error}", "Superseded: {error}"),
    "kb.version": ("版本", "Version"),
    "kb.entries": ("条目数", "Entries"),
    "kb.published_at": ("发布时间（北京时间）", "Published (Beijing time)"),
    "kb.figures": ("评估", "Evaluation"),
    "kb.export": ("导出", "Export"),
    "kb.export_version": ("导出版本 {version}（XLSX）", "Export version {version} (XLSX)"),
    "kb.rollback": ("回滚", "Roll back"),
    "kb.rollback_to": ("回滚到版本 {version}", "Roll back to version {version}"),
    "kb.rolled_back": ("已回滚到版本 {version}。", "Rolled back to version {version}."),
    "kb.activated": ("已启用版本 {version}。", "Version {version} is now active."),
    "kb.activate": ("启用", "Activate"),
    "kb.activate_version": ("启用版本 {version}", "Activate version {version}"),
    "kb.activate_col": ("启用或回滚", "Activate or roll back"),
    "kb.live_now": ("线上", "live"),
    "kb.older_versions": ("更早的版本", "Older versions"),
    "kb.newest_versions": ("最新的版本", "Newest versions"),
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
    "status.live": ("就绪", "Ready"),
    "status.activating": ("已就绪，正在启用", "Ready, activating"),
    "status.inactive": ("已就绪，未启用", "Ready, not active"),
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
    # an uploaded file's warnings (api/console/kbwarnings.py); English: engine.kb's words
    "kbw.sheet_others_skipped": (
        "读取的是工作表 {sheet}（第一个可见的工作表）；其他工作表未读取：{others}；"
        "跳过了隐藏的工作表：{skipped}",
        "read sheet {sheet}, the first visible one; other sheets ignored: {others}; "
        "hidden sheets skipped: {skipped}",
    ),
    "kbw.sheet_others": (
        "读取的是工作表 {sheet}（第一个可见的工作表）；其他工作表未读取：{others}",
        "read sheet {sheet}, the first visible one; other sheets ignored: {others}",
    ),
    "kbw.sheet_skipped": (
        "读取的是工作表 {sheet}（第一个可见的工作表）；跳过了隐藏的工作表：{skipped}",
        "read sheet {sheet}, the first visible one; hidden sheets skipped: {skipped}",
    ),
    "kbw.hidden_row": (
        "工作表 {sheet} 有 {n} 个隐藏行（被筛选或手动隐藏），和其他行一样被读取了：第 {rows} 行；"
        "请取消隐藏检查，删除不该放进知识库的行",
        "sheet {sheet} has {n} hidden row (hidden by a filter or by hand), read like the others: row "
        "{rows}; unhide them to check them, and delete any that should not be in the knowledge base",
    ),
    "kbw.hidden_rows": (
        "工作表 {sheet} 有 {n} 个隐藏行（被筛选或手动隐藏），和其他行一样被读取了：第 {rows} 行；"
        "请取消隐藏检查，删除不该放进知识库的行",
        "sheet {sheet} has {n} hidden rows (hidden by a filter or by hand), read like the others: rows "
        "{rows}; unhide them to check them, and delete any that should not be in the knowledge base",
    ),
    "kbw.hidden_rows_more": (
        "工作表 {sheet} 有 {n} 个隐藏行（被筛选或手动隐藏），和其他行一样被读取了：第 {rows} 行，"
        "另有 {more} 行；请取消隐藏检查，删除不该放进知识库的行",
        "sheet {sheet} has {n} hidden rows (hidden by a filter or by hand), read like the others: rows "
        "{rows} and {more} more; unhide them to check them, and delete any that should not be in the "
        "knowledge base",
    ),
    "kbw.column": (
        "{name} 不是知识库的列，这一列的内容被忽略了",
        "{name} is not a knowledge-base column; its values are ignored",
    ),
    "kbw.column_close": (
        "{name} 不是知识库的列，这一列的内容被忽略了（是不是想写 {close}？）",
        "{name} is not a knowledge-base column; its values are ignored (did you mean {close}?)",
    ),
    "kbw.column_target": (
        "{name} 不是知识库的列，这一列的内容被忽略了（是不是想写 {close}，即“{target}”？）",
        "{name} is not a knowledge-base column; its values are ignored (did you mean {close}, i.e. "
        "{target}?)",
    ),
    "kbw.key": (
        "{name} 不是知识库的列，已忽略（出现在 {count} {unit}中）",
        "{name} is not a knowledge-base column; it is ignored (in {count} {unit})",
    ),
    "kbw.key_close": (
        "{name} 不是知识库的列，已忽略（出现在 {count} {unit}中；是不是想写 {close}？）",
        "{name} is not a knowledge-base column; it is ignored (in {count} {unit}) (did you mean {close}?)",
    ),
    "kbw.key_target": (
        "{name} 不是知识库的列，已忽略（出现在 {count} {unit}中；是不是想写 {close}，即“{target}”？）",
        "{name} is not a knowledge-base column; it is ignored (in {count} {unit}) (did you mean {close}, "
        "i.e. {target}?)",
    ),
    "kbw.dropped": (
        "相似问法 {text} 里没有可以用来匹配的字词（只有表情、标点或符号），已删去",
        "paraphrase {text} has no word or character the matcher can use (only emoji, punctuation or "
        "symbols); it was dropped",
    ),
    "kbw.joined_rows": (
        "这个单元格跨了 {lines} 行，其中 {n} 行看起来是独立的行（逗号分隔的值和表头一样多，例如 {line}）："
        "单元格开头的双引号直到后面一个多余的引号才闭合，中间的行都被读进了这个单元格，它们的条目没有读到；"
        "如果是这样，请在单元格文字的末尾补上双引号",
        "this cell runs over {lines} lines, and {n} of them look like rows of their own (as many "
        "comma-separated values as the header, such as {line}): a double quote that opens the cell and is "
        "closed only by a stray quote further down joins the rows between into it, and their entries are "
        "missing; if so, close the quote after the cell's text",
    ),
    "kbw.same_to_matcher": (
        "条目 {entry} 的 {text} 与条目 {other_entry}（第 {row} {unit}）的{role} {other} 只差在标点、表情、"
        "全角/半角、繁简体或大小写上，机器人分不清它们：请合并这两个条目，或改写其中一个",
        "entry {entry} repeats {text} to the matcher: it is the same question as {other}, a {role} of "
        "entry {other_entry} ({unit} {row}), but for punctuation, emoji, width, traditional/simplified "
        "characters or case; the matcher cannot tell them apart, so merge the two entries or reword one",
    ),
    "kbw.unit.row": ("行", "row"),
    "kbw.unit.rows": ("行", "rows"),
    "kbw.unit.line": ("行", "line"),
    "kbw.unit.lines": ("行", "lines"),
    "kbw.unit.record": ("条记录", "record"),
    "kbw.unit.records": ("条记录", "records"),
    "kbw.unit.item": ("项", "item"),
    "kbw.unit.items": ("项", "items"),
    "kbw.role.standard_question": ("标准问题", "standard question"),
    "kbw.role.similar_question": ("相似问法", "similar question"),
    # conversations
    "conv.filter": ("转人工原因", "Handoff reason"),
    "conv.apply": ("筛选", "Filter"),
    "conv.none": ("没有符合条件的会话。", "No conversations match."),
    "conv.conversation": ("会话", "Conversation"),
    "conv.time": ("时间（北京时间）", "Time (Beijing)"),
    "conv.message": ("顾客消息", "Customer message"),
    "conv.corrections": ("客服纠正", "Agent corrections"),
    "conv.correct": ("正确条目", "Right entry"),
    "conv.out_of_scope": ("知识库里没有", "not in the knowledge base"),
    "conv.fb_up": ("👍 回答正确", "👍 right"),
    "conv.fb_down": ("👎 回答不好", "👎 not good"),
    "reason.all": ("全部消息", "All messages"),
    "reason.handoff": ("所有转人工", "Every handoff"),
    "reason.human": ("顾客要求人工", "Customer asked for a person"),
    "reason.repeated": ("重复提问", "Repeated question"),
    "reason.angry": ("顾客不满", "Upset customer"),
    "reason.non_text": ("非文字消息", "Non-text message"),
    "reason.mode_off": ("机器人已关闭", "Bot off"),
    "reason.mode_assist": ("辅助模式", "Assist mode"),
    "reason.no_model": ("未发布知识库", "No KB published"),
    "reason.not_delivered": ("回复未送达", "Reply not delivered"),
    "reason.other": ("把握不足等其他原因", "Not confident enough, and other"),
    # unanswered
    "un.intro": (
        "最近 30 天内机器人没有答好的 {n} 条消息（转人工、澄清、被纠正或差评），按意思聚类：",
        "{n} messages of the last 30 days the bot did not answer well (handed off, clarified, corrected "
        "or rated badly), clustered by meaning:",
    ),
    "un.why_correction": ("被客服纠正", "Corrected by an agent"),
    "un.why_thumbs_down": ("被点踩", "Thumbs down"),
    "un.why_handoff": ("转人工", "Handed off"),
    "un.why_clarify": ("需要澄清", "Clarified"),
    "un.why_low_rating": ("会话差评", "Badly rated conversation"),
    "un.none": ("没有可以聚类的消息。", "Nothing to cluster."),
    "un.cluster": ("第 {n} 组（{size} 条消息）", "Cluster {n} ({size} messages)"),
    "un.kind_new_entry": ("建议新增条目", "a new entry"),
    "un.kind_paraphrases": ("建议补充相似问法", "paraphrases of an entry"),
    "un.of_entry": ("条目", "Entry"),
    "un.medoid": ("代表性问题", "Typical question"),
    "un.closest": ("最接近的条目", "closest entry"),
    "un.new_entry": ("以此新建条目", "New entry from this cluster"),
    "un.messages": ("消息", "Messages"),
    "un.add_to": ("加为相似问法到", "Add as a paraphrase of"),
    "un.add": ("加为相似问法", "Add as paraphrase"),
    # why the bot decided: logged reasons' patterns (api/console/reasons.py); English: the engine's words
    "why.verbatim": ("消息就是该条目在知识库里的问法之一", "the message is one of this entry's KB questions"),
    "why.answer": ("置信度 {p} ≥ 回答阈值 {t}", "confidence {p} >= answer threshold {t}"),
    "why.clarify": (
        "置信度 {p} 介于澄清阈值（{c}）和回答阈值（{t}）之间",
        "confidence {p} between the clarify ({c}) and answer ({t}) thresholds",
    ),
    "why.below": ("置信度 {p} 低于澄清阈值 {c}", "confidence {p} < clarify threshold {c}"),
    "why.empty_message": (
        "空消息：规范化后没有可匹配的内容",
        "empty message: nothing to match after normalization",
    ),
    "why.human_phrase": ("顾客明确要求人工（“{phrase}”）", "explicit request for a human agent ('{phrase}')"),
    "why.smalltalk_entry": (
        "寒暄（{intent}），由知识库中对应的条目回答",
        "small talk ({intent}) answered by the KB's own entry",
    ),
    "why.smalltalk": ("寒暄：{intent}", "small talk: {intent}"),
    "why.empty_kb": ("知识库是空的", "empty knowledge base"),
    "why.no_word": ("消息里没有一个词出现在知识库中", "no word of the message occurs in the knowledge base"),
    "why.none_active": (
        "知识库中现在没有生效的条目（都不在生效时间内）",
        "no entry of the knowledge base is active now",
    ),
    "why.follow_up_none": (
        "知识库中没有与这个追问匹配的内容",
        "nothing in the knowledge base matches the follow-up",
    ),
    "why.human": ("顾客要求转人工", "customer asked for a human agent"),
    "why.repeated": ("顾客重复提问", "repeated question"),
    "why.angry": ("顾客情绪激动，且没有把握回答", "angry customer and no confident answer"),
    "why.venting": ("顾客不满，机器人还没有帮上忙", "the customer is upset and the bot has not helped yet"),
    "why.non_text": ("非文字消息（{kind}）", "non-text message ({kind})"),
    "why.contact_only": ("消息里只有联系方式", "contact details only"),
    "why.rejected": ("顾客说给出的选项都不是", "the customer said none of the options fits"),
    "why.out_of_range": (
        "顾客回复的序号超出了选项范围",
        "the customer picked an option number the list does not have",
    ),
    "why.no_words": (
        "没有可匹配的文字（空消息，或只有标点）",
        "no words to match (an empty message, or only punctuation)",
    ),
    "why.mode_off": (
        "本店已关闭机器人：由人工客服回答",
        "the bot is off for this shop: a human agent answers",
    ),
    "why.mode_assist": (
        "辅助模式：由人工客服回答，机器人提供建议",
        "assist mode: a human agent answers, with suggestions from the bot",
    ),
    "why.no_model": ("本店还没有发布知识库版本", "no KB version is published for this shop yet"),
    "why.cannot_answer": ("机器人无法回答：{inner}", "bot cannot answer: {inner}"),
    "why.misses": ("连续 {n} 次没能回答（{inner}）", "{n} misses in a row ({inner})"),
    "why.follow_up": (
        "接着上一个问题“{context}”的追问：{inner}",
        "follow-up to the previous question '{context}': {inner}",
    ),
    "why.choice": ("顾客选择了第 {n} 个选项", "customer chose option {n}"),
    "why.choice_gone": ("顾客选择的条目 {entry} 已不存在", "chosen entry {entry} no longer exists"),
    "why.several": ("一条消息里有 {n} 个问题，回答了 {k} 个", "{n} questions in one message, {k} answered"),
    "why.one_of": ("{inner}（消息中 {n} 个问题之一）", "{inner} (one of {n} questions in the message)"),
    "why.order_answered_missing": (
        "动态条目 {entry}：从京东查询 {action}（{missing}）",
        "dynamic entry {entry}: {action} from JD ({missing})",
    ),
    "why.order_answered": (
        "动态条目 {entry}：从京东查询 {action}",
        "dynamic entry {entry}: {action} from JD",
    ),
    "why.order_no_pin": (
        "没有顾客的 pin：订单只向下单的顾客展示",
        "no customer pin: an order is shown to its buyer only",
    ),
    "why.order_ask": ("动态条目 {entry} 需要订单号", "order number needed for dynamic entry {entry}"),
    "why.order_not_configured": (
        "本店没有设置京东凭证，无法查询订单",
        "the shop has no JD credentials for order lookups",
    ),
    "why.order_failed": ("订单查询失败（{kind}）：{detail}", "order lookup failed ({kind}): {detail}"),
    "why.order_refused": (
        "订单属于其他顾客：没有展示",
        "the order belongs to another customer: nothing shown",
    ),
    "why.order_refusals": ("多次询问其他顾客的订单", "orders of other customers asked for repeatedly"),
    "why.which_product": ("是哪个商品？{inner}", "which product? {inner}"),
    "why.products_match": ("有 {n} 个商品与名称匹配", "{n} products match the name"),
    "why.product_chosen": (
        "顾客为待回答的 {attribute} 问题选择了 {sku}",
        "customer chose {sku} for the pending {attribute} question",
    ),
    "why.product_named": ("消息提到了商品 {sku}", "product {sku} named"),
    "why.not_spec": ("不是问规格参数的问题（{inner}）", "not a spec value question ({inner})"),
    "why.spec_not_named": ("消息里没有说到规格 {key}", "spec {key} not named in the message"),
    "why.spec_question": ("规格问题（{key}）：{inner}", "spec question ({key}): {inner}"),
    "why.spec": ("规格 {key}：{inner}", "spec {key}: {inner}"),
    "why.suggestions": ("{n} 条建议", "{n} suggestion(s)"),
    "why.not_delivered": ("回复未能及时送达", "reply not delivered in time"),
    "why.not_deliverable": ("回复无法送达", "reply could not be delivered"),
    # quality
    "quality.period": ("时间范围", "Period"),
    "period.24h": ("最近 24 小时", "Last 24 hours"),
    "period.7d": ("最近 7 天", "Last 7 days"),
    "period.30d": ("最近 30 天", "Last 30 days"),
    "quality.intro": (
        "{since} 至 {until}（北京时间）：{n} 条顾客消息，{c} 个会话（不含控制台“试一试”里的测试）。",
        "{since} to {until} (Beijing time): {n} customer messages in {c} conversations (the console's Try "
        "tests not counted).",
    ),
    "quality.summary": ("概况", "Summary"),
    "quality.questions": ("问题数（不含寒暄）", "Questions (small talk apart)"),
    "quality.of_messages": ("占全部消息", "of all messages"),
    "quality.assist": ("人工客服请求的推荐", "Suggestions agents asked for"),
    "quality.feedback": ("反馈", "Feedback"),
    "quality.up": ("点赞", "Thumbs up"),
    "quality.down": ("点踩", "Thumbs down"),
    "quality.jd_ratings": ("京东评价数", "JD ratings"),
    "quality.rates": (
        "回答、澄清、转人工的比例（占问题数）",
        "Answer, clarify and handoff rates (of questions)",
    ),
    "quality.messages": ("消息数", "Messages"),
    "quality.latency": ("响应时间", "Latency"),
    "quality.p50": ("中位数（毫秒）", "Median (ms)"),
    "quality.p95": ("95 分位（毫秒）", "95th percentile (ms)"),
    "quality.p99": ("99 分位（毫秒）", "99th percentile (ms)"),
    "quality.handoff_reasons": ("转人工的原因", "Handoffs by reason"),
    "quality.confidence": ("决定时的置信度分布", "Confidence the bot decided with"),
    "quality.ratings": ("京东评价与机器人的处理", "JD ratings beside what the bot did"),
    "quality.score": ("{n} 分", "{n} stars"),
    "quality.outcome": ("机器人在该会话中", "What the bot did in the chat"),
    "quality.count": ("次数", "Count"),
    "quality.share": ("占比", "Share"),
    "quality.average": ("平均分", "Average"),
    "quality.dissatisfied": ("不满意（≤ {low} 分）", "Dissatisfied (≤ {low})"),
    "quality.top_entries": ("最常回答的问题", "Most asked entries"),
    "quality.handed_off": ("最常转人工的问题", "Most handed-off questions"),
    "quality.why": ("原因", "Why"),
    "quality.no_data": ("这段时间没有数据。", "No data in this period."),
    "quality.table": ("按时间的数据", "The figures over time"),
    "quality.time": ("时间（北京时间）", "Time (Beijing)"),
    "outcome.answered": ("已回答", "Answered"),
    "outcome.not_answered": ("未回答（仅澄清或寒暄）", "Not answered (clarified or small talk only)"),
    "outcome.handed_off": ("转了人工", "Handed off"),
    "outcome.unmatched": ("机器人未参与", "Not seen by the bot"),
    "code.explicit_request": ("顾客要求人工", "Customer asked for a person"),
    "code.low_confidence": ("把握不足", "Not confident enough"),
    "code.repeated_miss": ("连续没听懂", "Missed several times in a row"),
    "code.repeated_question": ("重复提问", "Repeated question"),
    "code.mood": ("顾客不满", "Upset customer"),
    "code.dynamic_failure": ("订单查询未能完成", "Order lookup did not work out"),
    "code.non_text": ("非文字消息", "Non-text message"),
    "code.mode_off": ("机器人已关闭", "Bot off"),
    "code.mode_assist": ("辅助模式", "Assist mode"),
    "code.no_model": ("未发布知识库", "No KB published"),
    "code.not_delivered": ("回复未送达", "Reply not delivered"),
    "code.other": ("其他", "Other"),
    "quality.evaluation": ("上次评估（模型构建时）", "Last evaluation (at build time)"),
    "quality.coverage": ("可自动回答的比例", "Share answered"),
    "quality.precision": ("回答准确率", "Answer precision"),
    "quality.interval": ("90% 区间", "90% interval"),
    "quality.top1": ("首位命中率", "Top-1 accuracy"),
    "quality.thresholds": ("阈值", "Thresholds"),
    "quality.examples": ("校准样本（范围内 / 范围外）", "Calibration examples (in / out of scope)"),
    "quality.synthetic": ("含合成的相似问法", "with synthetic paraphrases"),
    "quality.rule": ("阈值规则", "Threshold rule"),
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
