"""Admin work in the dashboard (Chromium): approve and drain nodes, make and revoke API keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from phage.testing import CoordinatorProcess, NodeProcess, wait_until

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
