"""The playground (``GET /``) in a real browser: headless Chromium driven by selenium, against
a live server on 127.0.0.1 with the tiny model of ``tests/test_server.py``.

Every wait is bounded; the page makes no request beyond its own origin."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_CHROMEDRIVER = "/usr/bin/chromedriver"
_MISSING = [
    what
    for what, absent in (
        ("selenium (pip install 'selenium>=4.10')", importlib.util.find_spec("selenium") is None),
        ("chromium (apt-get install chromium)", shutil.which("chromium") is None),
        (
            f"chromedriver at {_CHROMEDRIVER} (apt-get install chromium-driver)",
            not Path(_CHROMEDRIVER).is_file(),
        ),
    )
    if absent
]
if _MISSING:
    if os.environ.get("CI"):
        raise ImportError(f"missing: {', '.join(_MISSING)}; scripts/setup.sh installs them")
    pytest.skip(f"missing: {', '.join(_MISSING)}", allow_module_level=True)

import httpx  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_server import (  # noqa: E402
    MODEL,
    WAIT,
    _alone,
    _policy,
    bank,  # noqa: F401 (a fixture)
    live,
    llama,  # noqa: F401 (a fixture)
    tok,  # noqa: F401 (a fixture)
)
from torch import nn  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from emovec.empathy import EmpathicPolicy  # noqa: E402
from emovec.server import ServerOptions, create_app  # noqa: E402
from emovec.vectors import EmotionVectors  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::emovec.steering.HiddenNormWarning")

MESSAGE = "i was happy today and then ate bread with my sister"
TOKENS = 10
COLUMNS = ("plain", "steered")


@pytest.fixture(scope="module")
def playground(
    llama: nn.Module,  # noqa: F811
    tok: PreTrainedTokenizerFast,  # noqa: F811
    bank: EmotionVectors,  # noqa: F811
) -> Iterator[tuple[str, FastAPI, EmpathicPolicy]]:
    """A live server with an empathic policy, refusing any ``|α|`` above 1."""
    policy = _policy(llama, tok, bank)
    options = ServerOptions(model_name=MODEL, batch_window=0.01, max_tokens=100, max_strength=1)
    app = create_app(llama, tok, bank, options, policy=policy)
    with live(app) as (url, _):
        yield url, app, policy


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=_CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver: webdriver.Chrome, url: str, emotions: int) -> dict[str, WebElement]:
    """The page, loaded afresh, once its sliders are built: emotion → slider."""
    driver.get(f"{url}/")
    WebDriverWait(driver, WAIT).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#emotions input[type=range]")) == emotions
    )
    sliders = driver.find_elements(By.CSS_SELECTOR, "#emotions input[type=range]")
    return {slider.get_attribute("data-emotion") or "": slider for slider in sliders}


def _set(slider: WebElement, tenths: int) -> None:
    """Moves a slider by ``tenths`` steps with the arrow keys, as a user would."""
    key = Keys.ARROW_RIGHT if tenths > 0 else Keys.ARROW_LEFT
    slider.send_keys(key * abs(tenths))


def _send(driver: webdriver.Chrome, message: str, tokens: int) -> tuple[str, str]:
    """Types the message, sets max tokens, clicks Send and waits until both columns end:
    their states (``done`` or ``error``)."""
    box = driver.find_element(By.ID, "message")
    box.clear()
    box.send_keys(message)
    field = driver.find_element(By.ID, "max-tokens")
    field.clear()
    field.send_keys(str(tokens))
    driver.find_element(By.ID, "send").click()

    def ended(d: Any) -> tuple[str, str] | None:
        states = tuple(d.find_element(By.ID, c).get_attribute("data-state") for c in COLUMNS)
        ready = d.find_element(By.ID, "send").is_enabled()
        return states if ready and all(s in ("done", "error") for s in states) else None

    states: tuple[str, str] = WebDriverWait(driver, WAIT).until(ended)
    return states


def _text(driver: webdriver.Chrome, element_id: str) -> str:
    """An element's exact text (``textContent``: no rendering's white-space changes)."""
    return driver.find_element(By.ID, element_id).get_property("textContent") or ""


def test_the_page_is_one_self_contained_file(playground: tuple[str, FastAPI, Any]) -> None:
    url, _, _ = playground
    reply = httpx.get(f"{url}/", timeout=WAIT)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in reply.headers["content-security-policy"]
    assert "http://" not in reply.text and "https://" not in reply.text
    assert "innerHTML" not in reply.text


def test_sliders_steer_the_streamed_answer_beside_the_plain_one(
    playground: tuple[str, FastAPI, Any],
    browser: webdriver.Chrome,
    llama: nn.Module,  # noqa: F811
    tok: PreTrainedTokenizerFast,  # noqa: F811
    bank: EmotionVectors,  # noqa: F811
) -> None:
    url, app, _ = playground
    sliders = _open(browser, url, len(bank.emotions))
    assert list(sliders) == list(bank.emotions)
    ranges = {
        tuple(s.get_attribute(a) for a in ("min", "max", "step", "value")) for s in sliders.values()
    }
    assert ranges == {("-2", "2", "0.1", "0")}
    assert browser.find_element(By.ID, "max-tokens").get_attribute("value") == "64"
    _set(sliders["joy"], 7)
    assert sliders["joy"].get_attribute("value") == "0.7"
    assert browser.find_element(By.ID, "value-joy").text == "0.7"
    batches = len(app.state.scheduler.batch_sizes)
    assert _send(browser, MESSAGE, TOKENS) == ("done", "done")
    plain = _alone(llama, tok, bank, {}, MESSAGE, tokens=TOKENS)
    steered = _alone(llama, tok, bank, {"joy": 0.7}, MESSAGE, tokens=TOKENS)
    assert plain != steered
    assert (_text(browser, "plain"), _text(browser, "steered")) == (plain, steered)
    pieces = "return document.getElementById(arguments[0]).childNodes.length"
    assert all(browser.execute_script(pieces, column) > 1 for column in COLUMNS)  # streamed
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert not browser.find_element(By.ID, "policy").is_displayed()
    assert len(app.state.scheduler.batch_sizes) > batches  # the model answered, streamed


def test_a_refused_request_shows_the_servers_message(
    playground: tuple[str, FastAPI, Any],
    browser: webdriver.Chrome,
    llama: nn.Module,  # noqa: F811
    tok: PreTrainedTokenizerFast,  # noqa: F811
    bank: EmotionVectors,  # noqa: F811
) -> None:
    """α = 1.5 above the server's limit of 1: the steered column fails with the error body's
    message shown; the plain answer still arrives."""
    url, _, _ = playground
    sliders = _open(browser, url, len(bank.emotions))
    _set(sliders["anger"], 15)
    assert browser.find_element(By.ID, "value-anger").text == "1.5"
    assert _send(browser, MESSAGE, TOKENS) == ("done", "error")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": MESSAGE}],
        "emotions": {"anger": 1.5},
    }
    refused = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=WAIT)
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and message in error.text
    assert _text(browser, "plain") == _alone(llama, tok, bank, {}, MESSAGE, tokens=TOKENS)
    assert _text(browser, "steered") == ""


def test_the_empathic_switch_lets_the_server_choose_and_says_what_it_chose(
    playground: tuple[str, FastAPI, EmpathicPolicy],
    browser: webdriver.Chrome,
    llama: nn.Module,  # noqa: F811
    tok: PreTrainedTokenizerFast,  # noqa: F811
    bank: EmotionVectors,  # noqa: F811
) -> None:
    url, _, policy = playground
    sliders = _open(browser, url, len(bank.emotions))
    _set(sliders["fear"], 5)  # ignored once the switch is on
    browser.find_element(By.ID, "empathic").click()
    assert not any(slider.is_enabled() for slider in sliders.values())
    assert _send(browser, MESSAGE, TOKENS) == ("done", "done")
    recognition = policy.recognise([MESSAGE])[0]
    mix = policy.mix_for(recognition)
    assert mix  # the policy chose something to steer with
    assert _text(browser, "steered") == _alone(llama, tok, bank, mix, MESSAGE, tokens=TOKENS)
    shown = browser.find_element(By.ID, "policy").text
    assert f"Recognised: {recognition.emotion}" in shown
    assert all(emotion in shown for emotion in mix)
    browser.find_element(By.ID, "empathic").click()
    assert all(slider.is_enabled() for slider in sliders.values())
