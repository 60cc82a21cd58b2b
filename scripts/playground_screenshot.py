"""The README's picture of the playground: ``emovec serve``'s page on the embedded model, in
headless Chromium, a question asked with joy at 1 (plain and steered answers side by side).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/playground_screenshot.py docs/playground.png
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from emovec import EmotionVectors, load_model
from emovec.server import ServerOptions, create_app
from emovec.server.run import address_of, listening_socket, make_server

QUESTION = "How do I keep homemade bread fresh?"
WAIT = 180.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("--emotion", default="joy")
    parser.add_argument("--tenths", type=int, default=10, help="the slider's value × 10")
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()

    model, tokenizer = load_model()
    bank = EmotionVectors.load("vectors/smollm2-135m-instruct.safetensors")
    app = create_app(model, tokenizer, bank, ServerOptions(model_name="smollm2-135m-instruct"))
    sock = listening_socket("127.0.0.1", 0)
    server = make_server(app, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in ("--headless=new", "--no-sandbox", "--window-size=1100,760"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(f"{address_of(sock)}/")
        wait = WebDriverWait(driver, WAIT)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#emotions input[type=range]"))
        slider = driver.find_element(By.CSS_SELECTOR, f"input[data-emotion='{args.emotion}']")
        slider.send_keys(Keys.ARROW_RIGHT * args.tenths)
        driver.find_element(By.ID, "message").send_keys(QUESTION)
        tokens = driver.find_element(By.ID, "max-tokens")
        tokens.clear()
        tokens.send_keys(str(args.tokens))
        driver.find_element(By.ID, "send").click()
        columns = ("plain", "steered")
        wait.until(
            lambda d: all(
                d.find_element(By.ID, c).get_attribute("data-state") == "done" for c in columns
            )
        )
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(30)
        sock.close()


if __name__ == "__main__":
    main()
