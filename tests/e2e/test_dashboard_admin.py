"""Admin work in the dashboard (Chromium): approve and drain nodes, API keys, node earnings."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from phage.testing import CoordinatorProcess, NodeProcess, free_port, wait_online, wait_until

playwright_sync = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

from tests.e2e.test_dashboard import CHROMIUM, CHROMIUM_ARGS, shot, sign_in  # noqa: E402

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Chromium: apt-get install chromium"
)


@pytest.fixture
def page() -> Iterator[Page]:
    with playwright_sync.sync_playwright() as p:
        browser: Browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        errors: list[str] = []
        pg = browser.new_page(viewport={"width": 1440, "height": 1000})
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        yield pg
        browser.close()
        assert not errors, errors


def test_approve_drain_and_keys(tmp_path: Path, page: Page) -> None:
    coord = CoordinatorProcess(tmp_path / "coordinator", env={"PHAGE_ADMISSION": "approval"}).start()
    node = NodeProcess(coord, tmp_path / "node", name="newcomer").start()
    stranger = NodeProcess(coord, tmp_path / "stranger", name="stranger").start()

    def by_name(name: str) -> dict[str, Any]:
        with coord.client() as c:
            (found,) = [n for n in c.get("/api/nodes").json()["nodes"] if n["name"] == name]
        return dict(found)

    try:
        sign_in(page, coord)
        row = page.locator("#nodes-table tr[data-node-name=newcomer]")
        expect(row.locator("button[data-action=approve]")).to_be_visible(timeout=20_000)
        expect(row.locator("button[data-action=reject]")).to_be_visible()
        expect(row.locator("button[data-action=drain]")).to_have_count(0)  # not before it is admitted
        shot(page, "30-node-pending")

        # reject the stranger: the dialog warns it is for good; once confirmed the pool refuses it
        other = page.locator("#nodes-table tr[data-node-name=stranger]")
        other.locator("button[data-action=reject]").click(timeout=20_000)
        expect(page.locator("#dialog")).to_contain_text("can never join the pool again")
        page.locator("#dialog button[type=submit]").click()
        wait_until(lambda: by_name("stranger")["state"] == "rejected", 10, what="the stranger rejected")
        expect(other).to_have_attribute("data-state", "rejected", timeout=10_000)
        expect(other.locator("button[data-action=approve]")).to_have_count(0)
        expect(other.locator("button[data-action=reject]")).to_have_count(0)

        row.locator("button[data-action=approve]").click()
        expect(row).to_have_attribute("data-state", "online", timeout=20_000)
        assert by_name("newcomer")["admission"] == "admitted"

        row.locator("button[data-action=drain]").click()
        expect(row).to_have_attribute("data-draining", "true", timeout=10_000)
        expect(row.locator(".badge.s-draining")).to_be_visible()
        assert by_name("newcomer")["draining"] is True
        row.locator("button[data-action=undrain]").click()
        expect(row).to_have_attribute("data-draining", "false", timeout=10_000)

        # keys: make one, see its secret once, use it, revoke it
        expect(page.locator("#keys-card")).to_be_visible()
        page.click("#key-create")
        page.fill("#key-name", "ci-runner")
        page.fill("#key-limit", "5000")
        page.locator("#dialog button[type=submit]").click()
        secret = page.locator("#new-key-secret")
        expect(secret).to_contain_text("phk_")
        key = secret.inner_text().strip()
        shot(page, "31-key-made")
        page.locator("#dialog button[type=submit]").click()
        key_row = page.locator("#keys-table tr[data-key-name=ci-runner]")
        expect(key_row.locator("[data-credit=left]")).to_have_text("5,000")
        assert (
            httpx.get(coord.url + "/api/status", headers={"Authorization": f"Bearer {key}"}).status_code
            == 200
        )

        key_row.locator("button[data-action=revoke]").click()
        page.locator("#dialog button[type=submit]").click()
        expect(key_row).to_have_attribute("data-revoked", "true", timeout=10_000)
        wait_until(
            lambda: (
                httpx.get(coord.url + "/api/status", headers={"Authorization": f"Bearer {key}"}).status_code
                == 401
            ),
            10,
            what="the revoked key to be refused",
        )
        # the admin's own key offers no revoke button: an admin cannot lock themself out here
        admin_row = page.locator("#keys-table tr[data-key-name=admin]")
        expect(admin_row).to_have_count(1)
        expect(admin_row.locator("button[data-action=revoke]")).to_have_count(0)
        shot(page, "32-keys-and-usage")
    finally:
        stranger.stop()
        node.stop()
        coord.stop()


def test_node_earnings_are_shown_to_admins(tmp_path: Path, page: Page) -> None:
    """The tokens each node served, credited to its owner (what ``phage usage --nodes`` prints)."""
    coord = CoordinatorProcess(tmp_path / "coordinator", heartbeat_s=0.5).start()
    model = "standin-7b"
    node = NodeProcess(
        coord,
        tmp_path / "node",
        name="lender",
        engine="vllm",
        model=model,
        args=(
            "--engine-command",
            f"{sys.executable} -m phage.node.engines.standin",
            "--engine-port",
            str(free_port()),
        ),
    ).start()
    try:
        wait_online(coord, 1, timeout=90)

        def chat(tokens: int) -> None:
            with coord.client() as c:
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens}
                r = c.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text

        def served() -> bool:
            with coord.client() as c:
                return model in [m["id"] for m in c.get("/v1/models").json()["data"]]

        wait_until(served, 60, what="the model listed")
        chat(7)
        chat(5)

        def account() -> dict[str, int]:
            with coord.client() as c:
                (acct,) = c.get("/api/usage/nodes").json()["nodes"]
                return dict(acct)

        wait_until(lambda: account()["requests"] == 2, 30, what="both chats credited")
        acct = account()
        sign_in(page, coord)
        card = page.locator("#earnings-card")
        expect(card).to_be_visible()
        row = page.locator("#earnings-table tr[data-node-name=lender]")
        expect(row).to_have_attribute("data-node-id", acct["node_id"], timeout=10_000)
        cells = row.locator("td.num")
        expect(cells).to_have_text(
            [f"{acct[k]:,}" for k in ("requests", "prompt_tokens", "completion_tokens", "credited_tokens")]
        )
        assert acct["completion_tokens"] == 12 and acct["credited_tokens"] > 12
        expect(page.locator("#earnings-count")).to_have_text(f"{acct['credited_tokens']:,} tokens to 1 node")
        shot(page, "33-node-earnings")
        # a new chat shows up with the next usage refresh, without reloading the page
        chat(3)
        expect(row.locator("[data-credited=tokens]")).to_have_text(
            f"{account()['credited_tokens']:,}", timeout=20_000
        )
        # a user key sees neither the keys nor the earnings
        with coord.client() as c:
            user = c.post("/api/keys", json={"name": "reader"}).json()["key"]
        page.click("#signout")
        page.fill("#signin-key", user)
        page.click("#signin-submit")
        expect(page.locator("#app")).to_be_visible()
        expect(card).to_be_hidden()
        expect(page.locator("#keys-card")).to_be_hidden()
    finally:
        node.stop()
        coord.stop()
