"""The Gradio web UI in headless Chromium (Debian's chromium + Playwright for Python).

Skips cleanly unless both are present:  apt-get install -y chromium  and  pip install playwright
(no `playwright install`: the system browser is used).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from threads import one_thread

pytest.importorskip("gradio")
pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("TUNESMITH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("no chromium (apt-get install -y chromium)", allow_module_level=True)

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Records every text the last answer bubble shows, so the test can see it grow.
WATCH = """
(sel) => {
  window.__seen = [];
  const target = document.querySelector(sel);
  new MutationObserver(() => {
    const bots = target.querySelectorAll('[data-testid="bot"]');
    if (bots.length) window.__seen.push(bots[bots.length - 1].innerText);
  }).observe(target, {subtree: true, childList: true, characterData: true});
}
"""


@pytest.fixture(scope="module")
def ui(tiny_run):
    from tunesmith.serving.server import ServerThread, build_backend
    from tunesmith.webui import create_webui_app

    with one_thread():
        backend = build_backend({"tiny": tiny_run}, device="cpu")
        with ServerThread(create_webui_app(backend, "tunesmith · tiny")) as srv:
            srv.backend = backend
            yield srv


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def reference(ui, base=False, max_tokens=None):
    bot = ui.backend.models["tiny"].bot
    sampling = bot.defaults.updated(max_new_tokens=max_tokens)
    with ui.backend.lock:
        text = bot.generate_batch([[{"role": "user", "content": "你是谁？"}]], sampling, base=base)[0].text
    return text.rstrip("\ufffd")


def bot_text(page, chat):
    return page.locator(f"#{chat} [data-testid='bot']").last.inner_text(timeout=30_000).strip()


def ask(page, message="你是谁？"):
    page.locator("#prompt textarea").fill(message)
    page.locator("#send").click()


def shown(text: str) -> str:
    """``text`` as a comparison key for what the page shows. The chat renders Markdown, which folds
    line breaks and runs of spaces and turns markup characters into formatting, so neither is
    compared (the tiny test model emits arbitrary bytes)."""
    return re.sub(r"[\s*_`~#>|\\-]+", "", text)


def wait_answered(page, chat, expected, timeout_s=60.0):
    """Wait until the last answer in ``#chat`` shows ``expected``; on timeout say what it shows."""
    last = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        last = page.evaluate(
            "(sel) => { const b = document.querySelectorAll(sel + ' [data-testid=\"bot\"]');"
            " return b.length ? b[b.length - 1].innerText : null; }",
            f"#{chat}",
        )
        if last is not None and shown(last) == shown(expected):
            return
        time.sleep(0.1)
    raise AssertionError(f"#{chat} shows {last!r}, expected {expected!r}")


def set_slider(page, elem_id, value, tries=5):
    """Type ``value`` into a slider's number box until the slider itself shows it. The slider takes
    a typed value on its own schedule, and now and then (a busy machine) not at all; send only
    once it has."""
    box = page.locator(f"#{elem_id} input[type=number]")
    shown_js = f"document.querySelector('#{elem_id} input[type=range]').value"
    for _ in range(tries):
        box.fill(value)
        box.press("Enter")
        box.blur()
        try:
            page.wait_for_function(f"() => {shown_js} === '{value}'", timeout=5_000)
            return
        except sync_api.TimeoutError:
            continue
    raise AssertionError(f"#{elem_id} shows {page.evaluate(shown_js)!r} after {tries} tries, not {value!r}")


def test_type_a_message_and_see_the_streamed_answer(ui, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(ui.url + "/")
    page.wait_for_selector("#prompt textarea")
    page.get_by_text("Sampling").click()
    set_slider(page, "max-tokens", "48")  # long enough to watch it stream
    page.evaluate(WATCH, "#chat-main")
    ask(page)
    expected = reference(ui, max_tokens=48)  # the run's defaults are greedy: exactly this answer
    wait_answered(page, "chat-main", expected)
    assert shown(bot_text(page, "chat-main")) == shown(expected)
    seen = [shown(s) for s in page.evaluate("window.__seen")]
    partial = {s for s in seen if s and s != shown(expected)}
    assert partial, "the answer arrived in one piece, not streamed"
    assert all(shown(expected).startswith(s) for s in partial), (partial, expected)
    assert page.locator("#prompt textarea").input_value() == ""
    shot = tmp_path / "webui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ask(page, "再说一遍")  # history: a second turn appends, it does not replace
    page.wait_for_function(
        "() => document.querySelectorAll('#chat-main [data-testid=\"user\"]').length === 2", timeout=60_000
    )
    # Clear while the second answer may still be streaming: the chat empties and stays empty.
    page.locator("#clear").click()
    page.wait_for_function(
        "() => !document.querySelector('#chat-main [data-testid=\"user\"]')", timeout=30_000
    )
    time.sleep(2)  # long enough for a stream that was not stopped to write the conversation back
    assert page.locator("#chat-main [data-testid='user']").count() == 0
    page.close()


def test_side_by_side_answers_with_base_and_fine_tuned(ui, browser):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(ui.url + "/")
    page.wait_for_selector("#prompt textarea")
    page.locator("#compare input").check()
    page.wait_for_selector("#chat-base", state="visible")
    ask(page)
    wait_answered(page, "chat-main", reference(ui))
    wait_answered(page, "chat-base", reference(ui, base=True))
    page.close()


# Draws two characters in the page's own body font and says whether their pixels differ: where no
# font has CJK glyphs, every character is the same empty box.
GLYPHS_DIFFER = """
async ([a, b]) => {
  const family = getComputedStyle(document.querySelector('#prompt textarea')).fontFamily;
  await document.fonts.load(`32px ${family}`, a + b);
  const draw = (ch) => {
    const c = document.createElement('canvas'); c.width = 48; c.height = 48;
    const ctx = c.getContext('2d'); ctx.font = `32px ${family}`; ctx.fillText(ch, 4, 36);
    return Array.from(ctx.getImageData(0, 0, 48, 48).data).join(',');
  };
  const [pa, pb] = [draw(a), draw(b)];
  return {family, differ: pa !== pb, inked: /[1-9]/.test(pa)};
}
"""


def test_chinese_renders_without_cjk_system_fonts(ui, browser):
    """The page serves its own CJK font: 甄 and 嬛 draw as two different glyphs even where the
    machine has no CJK font (this test means most there: `fc-list :lang=zh` prints nothing)."""
    from tunesmith.webui import CJK_FAMILY, CJK_ROUTE, cjk_font_file

    assert cjk_font_file() is not None, "pip install justmytype-intl-cjk (part of tunesmith[webui])"
    page = browser.new_page()
    page.goto(ui.url + "/")
    page.wait_for_selector("#prompt textarea")
    result = page.evaluate(GLYPHS_DIFFER, ["甄", "嬛"])
    assert CJK_FAMILY in result["family"]
    assert result["inked"] and result["differ"], result
    font = page.request.get(ui.url + CJK_ROUTE)
    assert font.status == 200 and font.headers["content-type"] == "font/ttf"
    page.close()
