"""A real headless browser for tests: Debian's chromium, driven by Playwright's Python API.

Playwright's own browser download (``playwright install``) is never used: the browser is the
``chromium`` Debian package, which ``bash scripts/bootstrap.sh --dev`` installs when it is missing,
launched through ``BrowserType.launch(executable_path=...)``
(https://playwright.dev/python/docs/api/class-browsertype#browser-type-launch).
Playwright itself comes from requirements-dev.txt.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from testkit.cli import ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

#: where Debian's ``chromium`` package puts its launcher
DEBIAN_CHROMIUM = "/usr/bin/chromium"

#: tests run as root in CI, where chromium's sandbox cannot start (hence --no-sandbox); the rest
#: keeps a headless run from reaching out to Google's services or a GPU it does not need
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)

_FIX = "run `bash scripts/bootstrap.sh --dev` (it installs Debian's chromium package and requirements-dev.txt)"


def chromium_path() -> str:
    """The chromium executable: on PATH, else Debian's. AssertionError naming the fix when absent."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.access(DEBIAN_CHROMIUM, os.X_OK):
        return DEBIAN_CHROMIUM
    raise AssertionError(f"no chromium on PATH nor at {DEBIAN_CHROMIUM}: {_FIX}")


@contextmanager
def headless_chromium() -> Iterator[Browser]:
    """A headless chromium for the block; closed after it. AssertionError naming the fix when
    Playwright or chromium is missing (a test that needs the browser fails, it is never skipped)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise AssertionError(f"the Python package playwright is not installed: {_FIX}") from None
    executable = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS), headless=True)
        try:
            yield browser
        finally:
            browser.close()


def artifacts_dir() -> Path:
    """Where tests leave files for a person to look at: ``$ARTIFACTS_DIR``, else ``test-artifacts/``
    in the repository (git-ignored). Created when missing."""
    where = Path(os.environ.get("ARTIFACTS_DIR") or ROOT / "test-artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


def screenshot(page: Page, name: str, tmp_path: Path) -> list[Path]:
    """The whole page as ``name`` (a PNG), in the test's ``tmp_path/artifacts`` and in
    ``artifacts_dir()``; the paths written."""
    first = tmp_path / "artifacts" / name
    first.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(first), full_page=True)
    second = artifacts_dir() / name
    shutil.copyfile(first, second)
    return [first, second]
