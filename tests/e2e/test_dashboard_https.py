"""The dashboard over HTTPS in Debian's Chromium, which trusts the pool's CA and nothing else of phage's.

The CA goes into a fresh NSS database in the browser's own home (as ``certutil`` puts a company CA
into a user's browser); the certificate check stays on, so the page loads only because the chain
ends at the pinned CA, and the live feed runs over ``wss://``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from phage.testing import CoordinatorProcess, NodeProcess, wait_online

playwright_sync = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect  # noqa: E402

from tests.e2e.test_dashboard import CHROMIUM, CHROMIUM_ARGS, shot, sign_in  # noqa: E402

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() or shutil.which("certutil") is None,
    reason="needs Chromium and certutil: apt-get install chromium libnss3-tools",
)


@pytest.fixture
def tls_coordinator(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    coord = CoordinatorProcess(tmp_path / "coordinator", args=("--https",)).start()
    yield coord
    coord.stop()


def _browser_home(tmp_path: Path, ca_file: Path | None) -> Path:
    home = tmp_path / "browser-home"
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True)
    if ca_file is not None:
        add = ["certutil", "-A", "-d", f"sql:{db}", "-n", "phage pool CA", "-t", "C,,", "-i", str(ca_file)]
        subprocess.run(add, check=True)
    return home


def test_dashboard_over_tls_with_the_pool_ca(tls_coordinator: CoordinatorProcess, tmp_path: Path) -> None:
    coord = tls_coordinator
    node = NodeProcess(coord, tmp_path / "node", name="tls-node").start()
    try:
        wait_online(coord, 1)
        with playwright_sync.sync_playwright() as p:
            home = _browser_home(tmp_path, coord.ca_file)
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, env={"HOME": str(home)})
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                sign_in(page, coord)  # waits for the live feed: wss:// worked
                assert page.url.startswith("https://")
                expect(page.locator("#nodes")).to_contain_text("tls-node", timeout=10_000)
                shot(page, "20-dashboard-over-https")
            finally:
                browser.close()

            # the same browser without the CA: the certificate is refused, the page never loads
            untrusting = p.chromium.launch(
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                env={"HOME": str(_browser_home(tmp_path / "x", None))},
            )
            try:
                with pytest.raises(playwright_sync.Error, match="ERR_CERT_AUTHORITY_INVALID"):
                    untrusting.new_page().goto(coord.url + "/")
            finally:
                untrusting.close()
    finally:
        node.stop()
