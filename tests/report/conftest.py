"""A real browser for the report's tests: Debian's Chromium (/usr/bin/chromium, which .ci/run installs)
driven by Playwright, launched with that executable; Playwright never downloads a browser here.

Outside CI a machine without Chromium or Playwright skips these tests and says why; in CI (CI set)
their absence fails them, so a missing install step cannot pass unnoticed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("QAE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI installs it: .ci/run and `pip install -e '.[dev]'`)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (the dev extra has it)")
    if not Path(CHROMIUM).is_file():
        _missing(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as p:
        # as root (CI) Chromium runs only without its sandbox; a container's small /dev/shm crashes its tabs
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real digits-vit search, small: a profile target (latency predicted) and this host as a
    device (latency measured), with the sensitivity probes, scored on test, with its report built."""
    from harness.report.html import build_report
    from harness.run.config import SearchConfig
    from harness.run.search import run_search

    out = tmp_path_factory.mktemp("browser") / "run"
    cfg = SearchConfig(model="builtin:digits-vit", profiles=["hexagon-htp"], generations=2, population=6, seed=0,
                       devices=["local"], hil={"per_generation": 2, "runs": 5, "min_seconds": 0.05,
                                               "warmup_seconds": 0.05})
    with pytest.MonkeyPatch.context() as mp:  # the probes, which a run this small would skip as too dear
        mp.setattr("harness.run.search.probes_too_dear", lambda *_a, **_k: False)
        run_search(SearchConfig.from_dict({**cfg.to_dict(), "sensitivity_probes": True}), out,
                   say=lambda _m: None).close()
    build_report(out)
    return out


class Watched:
    """A page with every console message, page error and request it made recorded; requests other
    than the page's own address are refused (a report must open offline)."""

    def __init__(self, browser: Any, allowed_prefix: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.console: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

        def route(r: Any) -> None:
            self.requests.append(r.request.url)
            if r.request.url.startswith(allowed_prefix):
                r.continue_()
            else:
                r.abort()

        self.context.route("**/*", route)

    def problems(self) -> list[str]:
        return self.errors + [f"{t}: {m}" for t, m in self.console if t in ("error", "warning")]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser: Any) -> Iterator[Any]:
    made: list[Watched] = []

    def make(allowed_prefix: str) -> Watched:
        made.append(Watched(browser, allowed_prefix))
        return made[-1]

    yield make
    for w in made:
        w.close()
