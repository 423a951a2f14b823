"""A real headless Chromium (selenium) drives the playground served from a tiny random Qwen3 and a random SAE: analyse
a prompt, pick its strongest feature with a large strength, steer, and compare the two continuations. Also the static
dashboard's search box and sortable columns. Skipped without chromium + chromedriver, unless
QWENSCOPE_REQUIRE_BROWSER=1 (then it fails)."""

from __future__ import annotations

import pytest

from qwenscope.features.dashboard import write_dashboard
from qwenscope.serve.playground import Playground, build_app
from qwenscope.steer import generate_text

PROMPT = "Tell me a story"
WAIT_S = 60


@pytest.fixture
def served(qwen3_parts, qwen3_store, port):
    app = build_app(*qwen3_parts, qwen3_store)
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def _type(browser, selector: str, text: str, then: str = "") -> None:
    """Replace the text of the input under ``selector`` the way a user does (select all, type)."""
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element("css selector", selector)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    box.send_keys(text + then)


def _wait_value(browser, selector: str, check=bool) -> str:
    """The value of the element under ``selector`` once ``check(value)`` holds."""
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(driver):
        value = driver.find_element("css selector", selector).get_property("value")
        return value if check(value) else False

    return WebDriverWait(browser, WAIT_S).until(ready, f"{selector} never got its value")


def test_steering_in_the_browser(browser, served, qwen3_parts, qwen3_store):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    model, tokenizer, sae = qwen3_parts
    top = Playground(model, tokenizer, sae).analyse(PROMPT)[2][0]  # the prompt's strongest feature
    browser.get(served)
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements("css selector", "#prompt textarea"))
    _type(browser, "#prompt textarea", PROMPT)
    browser.find_element("css selector", "#analyse-btn").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: f"Feature {top}" in d.find_element("id", "feature-card").text)
    table = browser.find_element("id", "token-table").text
    assert "' story'" in table and f"{top}:" in table
    _type(browser, "#strength input", "60")
    browser.find_element("css selector", "#add-btn").click()
    assert _wait_value(browser, "#features textarea") == f"{top}:60"
    _type(browser, "#max-new-tokens input[type=number]", "8", then=Keys.TAB)
    browser.find_element("css selector", "#steer-btn").click()
    steered = _wait_value(browser, "#steered textarea")
    plain = _wait_value(browser, "#unsteered textarea")
    assert plain == generate_text(model, tokenizer, PROMPT, max_new_tokens=8)  # what a direct greedy generate gives
    assert steered != plain
    assert steered == Playground(model, tokenizer, sae).generate(PROMPT, f"{top}:60", max_new_tokens=8)[1]


_VISIBLE_ROWS = (
    "return [...document.querySelectorAll('#rows tr')].filter(r => r.offsetParent).map(r => r.dataset.search)"
)
_MAX_COLUMN = "return [...document.querySelectorAll('#rows tr')].map(r => parseFloat(r.cells[4].dataset.v))"


def test_dashboard_search_and_sort_in_the_browser(browser, qwen3_store, tmp_path):
    index = write_dashboard(qwen3_store, tmp_path)
    browser.get(index.as_uri())
    rows = browser.execute_script(_VISIBLE_ROWS)
    assert len(rows) == len(browser.find_elements("css selector", "#rows tr")) > 3
    fid = rows[2].split()[0]
    _type(browser, "#q", fid)
    shown = browser.execute_script(_VISIBLE_ROWS)
    assert shown and all(fid in r for r in shown) and len(shown) < len(rows)
    assert browser.find_element("id", "count").text == str(len(shown))
    _type(browser, "#q", "")
    assert browser.execute_script(_VISIBLE_ROWS) == rows
    for descending in (False, True):  # the first click sorts ascending, the second descending
        browser.find_element("xpath", "//th[text()='max act']").click()
        maxes = browser.execute_script(_MAX_COLUMN)
        assert len(maxes) == len(rows) and maxes == sorted(maxes, reverse=descending)
