"""KB upload warnings and entry ids holding "/" through the service, on SQLite + in-process state and on
PostgreSQL + Redis (the fixtures of test_service)."""

from __future__ import annotations

import io

import openpyxl
from fastapi.testclient import TestClient

from tests.test_service import KB, kb_csv, new_shop
from tests.test_service import client as client
from tests.test_service import settings as settings


def test_upload_answers_with_the_warnings_of_a_kb_that_loads(client: TestClient) -> None:
    key = new_shop(client)
    data = kb_csv(extra="size/weight,多重,,约1.5公斤,,,\n").replace(
        b"valid_from,valid_to",
        b"valid_from,valid_until,\xe5\xa4\x87\xe6\xb3\xa8",  # 备注
    )
    r = client.post("/v1/shops/shop-a/kb", headers=key, files={"file": ("shop.csv", data)})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "entries": len(KB) + 1,
        "version": None,
        "reused": False,
        "warnings": [
            {
                "source": "shop.csv",
                "row": 1,
                "column": "G",
                "message": "'valid_until' is not a knowledge-base column; its values are ignored "
                "(did you mean 'valid_to'?)",
            },
            {
                "source": "shop.csv",
                "row": 1,
                "column": "H",
                "message": "'备注' is not a knowledge-base column; its values are ignored",
            },
        ],
    }
    r = client.post("/v1/shops/shop-a/kb", headers=key, files={"file": ("shop.csv", kb_csv())})
    assert r.status_code == 200 and r.json()["warnings"] == []


def test_a_refused_upload_also_lists_the_warnings(client: TestClient) -> None:
    """The 422 of a workbook names the sheet its row numbers are of."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "KB2"
    for row in (["id", "question", "answer"], ["A", "怎么退货", "#REF!"]):
        sheet.append(row)
    workbook.create_sheet("Notes").append(["x", "y"])
    buffer = io.BytesIO()
    workbook.save(buffer)
    key = new_shop(client)
    r = client.post("/v1/shops/shop-a/kb", headers=key, files={"file": ("shop.xlsx", buffer.getvalue())})
    assert r.status_code == 422, r.text
    [issue] = r.json()["issues"]
    assert (issue["row"], issue["column"]) == (2, "answer") and "Excel error #REF!" in issue["message"]
    assert r.json()["warnings"] == [
        {
            "source": "shop.xlsx",
            "row": None,
            "column": None,
            "message": "read sheet 'KB2', the first visible one; other sheets ignored: 'Notes'",
        }
    ]


def test_an_entry_whose_id_holds_a_slash_can_be_fetched_edited_and_deleted(client: TestClient) -> None:
    key = new_shop(client)
    data = kb_csv(extra="size/weight,多重,重量多少,约1.5公斤,,,\n")
    assert (
        client.post("/v1/shops/shop-a/kb", headers=key, files={"file": ("kb.csv", data)}).status_code == 200
    )
    r = client.get("/v1/shops/shop-a/entries/size/weight", headers=key)
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["answer"]) == ("size/weight", "约1.5公斤")
    assert client.get("/v1/shops/shop-a/entries/size%2Fweight", headers=key).json()["id"] == "size/weight"
    body = {"question": "多重", "answer": "约1.4公斤"}
    r = client.put("/v1/shops/shop-a/entries/size/weight", headers=key, json=body)
    assert r.status_code == 200 and r.json()["id"] == "size/weight", r.text
    assert len(client.get("/v1/shops/shop-a/entries", headers=key).json()) == len(KB) + 1  # replaced
    assert client.delete("/v1/shops/shop-a/entries/size/weight", headers=key).status_code == 204
    assert client.get("/v1/shops/shop-a/entries/size/weight", headers=key).status_code == 404
    assert client.delete("/v1/shops/shop-a/entries/size/weight", headers=key).status_code == 404
    assert client.get("/v1/shops/shop-a/entries/size", headers=key).status_code == 404
