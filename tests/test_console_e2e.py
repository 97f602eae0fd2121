"""The merchant console in a real browser: Playwright driving Debian's Chromium against a real server.

The server (tests/console_server.py) runs on 127.0.0.1; every request the page makes is intercepted and
one to any other host fails the test. Each page is screenshotted to test-artifacts/console/ and checked
with axe-core (from the axe-playwright-python package): no serious or critical violation is accepted.
Skipped with a reason when Chromium or Playwright is missing, unless KEFU_TEST_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.console_server import KB, PASSWORD, Server, kb_csv, running

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"


def _require_browser() -> Any:
    """The sync Playwright API, or a skip (a failure where CI promised a browser)."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed (pip install -e '.[dev]')"
    if problem is None and not CHROMIUM.is_file():
        problem = f"{CHROMIUM} is missing (make test-tools installs Debian's chromium)"
    if problem is not None:
        if os.environ.get("KEFU_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"KEFU_TEST_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _require_browser()
    with running(tmp_path_factory.mktemp("console")) as s:
        yield s


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-background-networking"]
        )
        yield b
        b.close()


class Guard:
    """Every request the page makes; any to a host other than 127.0.0.1 is aborted and remembered."""

    def __init__(self) -> None:
        self.outside: list[str] = []
        self.seen = 0

    def __call__(self, route: Any) -> None:
        self.seen += 1
        url = route.request.url
        if urlparse(url).hostname != "127.0.0.1":
            self.outside.append(url)
            route.abort()
        else:
            route.continue_()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(locale="zh-CN")
    guard = Guard()
    context.route("**/*", guard)
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()
    assert guard.seen > 0
    assert guard.outside == [], f"requests left 127.0.0.1: {guard.outside}"


def check_page(page: Any, name: str) -> None:
    """Screenshot the page and run axe-core on it: no serious or critical accessibility violation."""
    from axe_playwright_python.sync_playwright import Axe

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    results = Axe().run(page)
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == [], f"accessibility violations on {name}: {bad}"


def login(page: Any, server: Server, shop: str, secret: str) -> None:
    page.goto(f"{server.url}/console/login")
    page.get_by_label("店铺 ID").fill(shop)
    page.get_by_label("API 密钥或控制台密码").fill(secret)
    page.get_by_role("button", name="登录").click()


def decisions(page: Any) -> list[str]:
    return [
        str(d)
        for d in page.locator("[data-decision]").evaluate_all("els => els.map(e => e.dataset.decision)")
    ]


def test_login_try_flag_settings_and_logout(page: Any, server: Server) -> None:
    """Log in with the password, ask in Try, flag a wrong answer, switch the mode off, log out."""
    page.goto(f"{server.url}/console/try")
    assert page.url.endswith("/console/login")  # nothing is visible without a session
    check_page(page, "login")
    login(page, server, "shop-a", "not the password")
    assert page.get_by_role("alert").inner_text() == "店铺 ID 或密码不正确。"
    login(page, server, "shop-a", PASSWORD)
    assert page.url.endswith("/console/try")
    cookie = next(c for c in page.context.cookies() if c["name"] == "kefu_console")
    # Chromium keeps a Secure cookie on http://127.0.0.1 (a potentially trustworthy origin)
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console"

    page.get_by_label("顾客消息").fill("发票怎么开\n质保几年")
    page.get_by_role("button", name="发送").click()
    assert decisions(page) == ["answer", "answer"]
    answers = page.locator(".answer").all_inner_texts()
    assert answers == ["支持开具电子发票和专票。", "整机保修两年。"]
    assert page.locator("table").first.locator("tbody tr").count() >= 2  # candidates with scores
    check_page(page, "try")

    # flag the second answer as wrong: the right entry is picked from the list (by keyboard)
    select = page.get_by_label("回答错了？正确的条目：").nth(1)
    select.focus()
    select.select_option("return")
    page.get_by_role("button", name="标记为错误").nth(1).click()
    assert page.get_by_role("status").inner_text() == "已记录：正确条目是 return。"
    with server.api("shop-a") as api:
        labelled = api.get("/v1/shops/shop-a/feedback/labelled.csv").text
    assert "质保几年,return" in labelled

    page.get_by_role("link", name="设置", exact=True).click()
    check_page(page, "settings")
    page.get_by_label("关闭").check()
    page.get_by_role("button", name="保存模式").click()
    assert "模式已改为：关闭" in page.get_by_role("status").inner_text()
    page.get_by_role("link", name="试一试").click()
    page.get_by_label("顾客消息").fill("发票怎么开")
    page.get_by_role("button", name="发送").click()
    assert decisions(page) == ["handoff"]
    assert "本店已关闭机器人" in page.locator(".reason").inner_text()  # the reason, in Chinese

    # English at a click, and back
    page.get_by_role("link", name="English").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Try"
    check_page(page, "try-en")
    page.get_by_role("link", name="中文").click()

    page.get_by_role("button", name="退出登录").click()
    assert page.url.endswith("/console/login")
    page.goto(f"{server.url}/console/settings")
    assert page.url.endswith("/console/login")  # refused after logout
    with server.api("shop-a") as api:
        assert api.put("/v1/shops/shop-a/mode", json={"mode": "auto"}).status_code == 200


def test_keyboard_reaches_every_control(page: Any, server: Server) -> None:
    """Tab visits every link, button and field of a page (a radio group is one stop; arrows move in it)."""
    login(page, server, "shop-b", server.keys["shop-b"])  # the API key logs in as well
    for path in (
        "/console/try",
        "/console/settings",
        "/console/kb",
        "/console/kb/entry",
        "/console/kb/upload",
        "/console/kb/diff",
        "/console/kb/versions",
        "/console/conversations",
        "/console/unanswered",
        "/console/quality",
    ):
        page.goto(server.url + path)
        controls = page.locator(
            "a[href], button, input:not([type=hidden]):not([type=radio]), input[type=radio]:checked, "
            "select, textarea"
        )
        expected = controls.count()
        reached = set()
        for _ in range(expected + 5):
            page.keyboard.press("Tab")
            reached.add(page.evaluate("document.activeElement.outerHTML.slice(0, 120)"))
        missing = [
            html
            for html in controls.evaluate_all("els => els.map(e => e.outerHTML.slice(0, 120))")
            if html not in reached
        ]
        assert missing == [], f"not reachable by Tab on {path}: {missing}"
        radios = page.locator("input[type=radio]")
        if radios.count():
            page.locator("input[type=radio]:checked").focus()
            page.keyboard.press("ArrowDown")
            assert page.evaluate("document.activeElement.type") == "radio"
            assert page.evaluate("document.activeElement.checked")
        assert re.search("kefu", page.title(), re.I) or "控制台" in page.title()


def test_kb_fixture_is_the_published_one(server: Server) -> None:
    """The shops start with the KB the scenarios below expect (guards the fixture itself)."""
    with server.api("shop-a") as api:
        entries = api.get("/v1/shops/shop-a/entries").json()
    assert [e["id"] for e in entries] == [k[0] for k in KB]
    assert kb_csv().startswith(b"id,question")


GIFT = ("gift-wrap", "可以包装成礼物吗", "能包装成礼品吗|有礼品包装吗|送人能包装吗", "支持免费礼品包装。")


def upload(page: Any, data: bytes, name: str = "kb.csv") -> None:
    page.get_by_role("link", name="上传文件").click()
    page.get_by_label("知识库文件").set_input_files(
        files=[{"name": name, "mimeType": "text/csv", "buffer": data}]
    )
    page.get_by_role("button", name="上传", exact=True).click()


def ask(page: Any, text: str) -> tuple[str, str]:
    page.get_by_role("link", name="试一试").click()
    page.get_by_label("顾客消息").fill(text)
    page.get_by_role("button", name="发送").click()
    return decisions(page)[0], page.locator(".answer").first.inner_text()


def test_kb_upload_fix_publish_try_mode_off_rollback_logout(page: Any, server: Server) -> None:
    """The issue's scenario, through the pages only."""
    import openpyxl

    login(page, server, "shop-b", PASSWORD)
    page.get_by_role("link", name="知识库", exact=True).click()
    check_page(page, "kb")
    # an upload with a blank answer on row 3 of the file: reported by row, nothing stored
    page.get_by_role("link", name="知识库", exact=True).click()
    broken = kb_csv([*KB[:1], (GIFT[0], GIFT[1], GIFT[2], ""), *KB[1:]])
    upload(page, broken, "新知识库.csv")
    issues = page.locator("table.issues tbody tr")
    assert issues.count() == 1
    assert issues.first.locator("td").all_inner_texts() == [
        "新知识库.csv",
        "3",
        "answer",
        "answer is blank; every entry needs one",
    ]
    check_page(page, "kb-upload-errors")
    with server.api("shop-b") as api:
        assert len(api.get("/v1/shops/shop-b/entries").json()) == len(KB)  # nothing was stored

    # fixed: the diff against the live version shows the one new entry before anything is published,
    # and what the file loaded with but deserves a look (a column that is not a KB column)
    fixed = kb_csv([*KB, GIFT]).decode("utf-8").splitlines()
    noted = "\n".join([fixed[0] + ",备注", *(line + ",内部备注" for line in fixed[1:])]) + "\n"
    upload(page, noted.encode("utf-8"), "新知识库.csv")
    assert page.url.split("?")[0].endswith("/console/kb/diff")
    assert "新增 1 条" in page.locator("ul.summary").inner_text()
    assert page.locator("table.warnings tbody tr").first.locator("td").all_inner_texts() == [
        "新知识库.csv",
        "1",
        "E",
        "'备注' 不是知识库的列，这一列的内容被忽略了",
    ]
    assert page.locator("tr.diff-added").inner_text().count("gift-wrap") == 1
    check_page(page, "kb-diff")

    # browse, search and edit: a paraphrase added to an entry by hand
    page.get_by_role("link", name="浏览").click()
    page.get_by_label("搜索").fill("礼品")
    page.get_by_role("button", name="搜索").click()
    assert page.locator("tbody tr").count() == 1
    page.get_by_role("link", name="编辑 gift-wrap").click()
    check_page(page, "kb-entry")
    similar = page.get_by_label("相似问法（每行一个）")
    similar.fill(similar.input_value() + "\n可以帮忙包装一下吗")
    page.get_by_role("button", name="保存", exact=True).click()
    assert "已保存" in page.get_by_role("status").inner_text()
    assert "可以帮忙包装一下吗" in page.locator("tbody").inner_text()

    # publish: the page follows the build to the end
    page.get_by_role("button", name="发布").click()
    assert page.url.split("?")[0].endswith("/console/kb/publish")
    page.locator("[data-status-value=ready][data-state=live]").wait_for(timeout=120_000)
    assert page.locator("progress").evaluate("p => p.value") == 100
    assert "版本 2 已上线" in page.locator("[data-done]").inner_text()
    check_page(page, "kb-publish")

    decision, answer = ask(page, "可以包装成礼物吗")
    assert (decision, answer) == ("answer", GIFT[3])
    assert ask(page, "可以帮忙包装一下吗") == ("answer", GIFT[3])

    # flag a wrong answer: the message was about something else
    ask(page, "送人能包装吗")
    page.get_by_label("回答错了？正确的条目：").select_option("__out_of_scope__")
    page.get_by_role("button", name="标记为错误").click()
    assert page.get_by_role("status").inner_text() == "已记录：知识库里没有正确答案。"

    # mode off: the same question is handed off
    page.get_by_role("link", name="设置", exact=True).click()
    page.get_by_label("关闭").check()
    page.get_by_role("button", name="保存模式").click()
    assert ask(page, "可以包装成礼物吗")[0] == "handoff"
    page.get_by_role("link", name="设置", exact=True).click()
    page.get_by_label("自动").check()
    page.get_by_role("button", name="保存模式").click()

    # versions: export version 2 as XLSX, roll back to version 1
    page.get_by_role("link", name="知识库", exact=True).click()
    page.get_by_role("link", name="版本", exact=True).click()
    check_page(page, "kb-versions")
    with page.expect_download() as download:
        page.get_by_role("link", name="导出版本 2（XLSX）").click()
    assert download.value.suggested_filename == "shop-b-kb-v2.xlsx"
    sheet = openpyxl.load_workbook(io.BytesIO(Path(download.value.path()).read_bytes())).active
    assert sheet is not None
    ids = [row[0] for row in sheet.iter_rows(min_row=2, values_only=True)]
    assert ids == [k[0] for k in KB] + ["gift-wrap"]
    page.get_by_role("button", name="回滚到版本 1").click()
    assert page.get_by_role("status").inner_text() == "已回滚到版本 1。"
    with server.api("shop-b") as api:
        deadline = time.monotonic() + 30
        while api.get("/v1/shops/shop-b").json()["served_version"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert ask(page, "可以包装成礼物吗") != ("answer", GIFT[3])

    page.get_by_role("button", name="退出登录").click()
    page.goto(f"{server.url}/console/kb")
    assert page.url.endswith("/console/login")
    assert page.request.get(f"{server.url}/console/kb/export/2.xlsx", max_redirects=0).status == 303


def test_conversations_unanswered_and_quality(page: Any, server: Server) -> None:
    """The log pages: a handoff filtered by reason with its correction, a mined message added as a
    paraphrase in one click, a new entry prefilled from a cluster, and the quality charts."""
    texts = ["转人工", "火星上能送货吗", "火星能送到吗", "能送货到火星吗", "发票怎么开"]
    with server.api("shop-a") as api:
        replies = [
            api.post("/v1/shops/shop-a/messages", json={"conversation_id": "e2e-log", "text": t}).json()
            for t in texts
        ]
        assert replies[0]["kind"] == "handoff" and replies[-1]["kind"] == "answer"
        fb = {"exchange_id": replies[-1]["exchange_id"], "kind": "correction", "correct_entry_id": "payment"}
        assert api.post("/v1/shops/shop-a/feedback", json=fb).status_code == 201

    login(page, server, "shop-a", PASSWORD)
    page.get_by_role("link", name="会话记录").click()
    log = page.locator("section", has_text="e2e-log")
    assert log.locator("tbody tr").count() == len(texts)
    assert "正确条目: payment" in log.locator("tbody tr").last.inner_text()
    check_page(page, "conversations")
    page.get_by_label("转人工原因").select_option("human")
    page.get_by_role("button", name="筛选").click()
    rows = page.locator("section", has_text="e2e-log").locator("tbody tr")
    assert rows.count() == 1 and "转人工" in rows.first.inner_text()
    assert "顾客要求转人工" in rows.first.inner_text()  # the logged reason, in Chinese

    page.get_by_role("link", name="未解决的问题").click()
    check_page(page, "unanswered")
    cluster = page.locator("section", has_text="火星")
    assert cluster.count() >= 1
    message = cluster.first.locator("tbody tr").first
    text = message.locator("td").first.inner_text()
    entry = message.get_by_role("combobox").input_value()
    message.get_by_role("button", name="加为相似问法").click()  # one click, the closest entry preselected
    assert page.url.endswith("/console/unanswered")
    with server.api("shop-a") as api:
        assert text in api.get(f"/v1/shops/shop-a/entries/{entry}").json()["similar"]
    page.get_by_role("link", name="以此新建条目").first.click()
    assert page.get_by_label("标准问题").input_value() != ""
    assert page.get_by_label("ID").input_value() == ""

    page.get_by_role("link", name="质量").click()
    assert page.locator("figure.chart svg[role=img]").count() == 6
    periods = page.get_by_role("navigation", name="时间范围")
    assert periods.locator("[aria-current=true]").inner_text() == "最近 7 天"
    periods.get_by_role("link", name="最近 24 小时").click()
    assert page.url.endswith("/console/quality?period=24h")
    assert periods.locator("[aria-current=true]").inner_text() == "最近 24 小时"
    main = page.locator("main").inner_text()
    assert "顾客要求人工" in main  # 转人工, by its reason
    assert "火星" in page.locator("section", has_text="最常转人工的问题").inner_text()
    evaluation = page.locator("section", has_text="上次评估").locator("dl.facts").inner_text()
    assert evaluation.count("%") >= 2  # coverage and precision of the last build
    check_page(page, "quality")
