#!/usr/bin/env python3
"""Drive a running Open WebUI (started by scripts/webui-check.sh) against a model it serves.

Two checks, both against the same Open WebUI instance:
  1. its own HTTP API: sign in (auth is off, so any credentials give the built-in admin's token),
     list the models, and POST /api/chat/completions with the question: the answer must be non-empty;
  2. a real headless Chromium (Debian's chromium + chromedriver through selenium): open the UI,
     pick the model in the model selector, type the question, send it, wait for the answer,
     save a screenshot. Fails when no answer text appears.

Exit status: 0 when both pass, 1 when a check fails (the message says which), 2 on usage errors.
Needs only the standard library and selenium (the webui venv has both).
"""

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request

QUESTION = "现在你要扮演我碰到一位神秘的算命大师, 你是谁?今天我的事业运道如何?"


class CheckFailed(Exception):
    pass


def log(msg):
    print(f"webui_check: {msg}", file=sys.stderr, flush=True)


def http(method, url, body=None, token=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode() or "null")
    except urllib.error.HTTPError as e:
        raise CheckFailed(f"{method} {url}: HTTP {e.code}: {e.read().decode(errors='replace')[:500]}")
    except urllib.error.URLError as e:
        raise CheckFailed(f"{method} {url}: {e.reason}")


def signin(base):
    # With WEBUI_AUTH=False, 0.12.4's /api/v1/auths/signin ignores the form and signs in (creating
    # on first use) the built-in admin@localhost; the form's fields must still be present.
    res = http("POST", f"{base}/api/v1/auths/signin", {"email": "admin@localhost", "password": "admin"})
    token = (res or {}).get("token")
    if not token:
        raise CheckFailed(f"signin gave no token: {res!r}")
    return token


def pick_model(base, token, wanted):
    models = (http("GET", f"{base}/api/models", token=token) or {}).get("data") or []
    ids = [m.get("id") for m in models]
    log(f"Open WebUI lists {len(ids)} model(s): {ids}")
    if not models:
        raise CheckFailed("Open WebUI lists no model: is the connection (OLLAMA_BASE_URL / OPENAI_API_BASE_URL) reachable?")
    if wanted:
        # exact id first, then the id without an Ollama tag, then a substring
        for m in models:
            if m["id"] == wanted:
                return m
        for m in models:
            if m["id"].split(":")[0] == wanted:
                return m
        for m in models:
            if wanted in m["id"] or wanted in (m.get("name") or ""):
                return m
        raise CheckFailed(f"model {wanted!r} is not among {ids}")
    return models[0]


def api_check(base, token, model, question, max_tokens, timeout):
    t0 = time.monotonic()
    res = http(
        "POST",
        f"{base}/api/chat/completions",
        {
            "model": model["id"],
            "stream": False,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": question}],
        },
        token=token,
        timeout=timeout,
    )
    try:
        answer = res["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise CheckFailed(f"/api/chat/completions answered without a message: {json.dumps(res)[:500]}")
    if not answer.strip():
        raise CheckFailed(f"/api/chat/completions gave an empty answer: {json.dumps(res)[:500]}")
    log(f"API check passed in {time.monotonic() - t0:.1f}s; answer: {answer.strip()[:160]!r}")
    return answer


def prepare_user_settings(base, token, max_tokens):
    # The browser signs in as the same admin. Its first visit would open the "what's new" changelog
    # modal over the chat (admins see it until settings.version matches), and a tiny model can ramble
    # until the context is full: hide the one and cap the other, as a user would in Settings.
    config = http("GET", f"{base}/api/config", token=token) or {}
    settings = {
        "ui": {
            "showChangelog": False,
            "version": config.get("version"),
            "params": {"max_tokens": max_tokens},
        }
    }
    http("POST", f"{base}/api/v1/users/user/settings/update", settings, token=token)


def browser_check(base, token, model, question, screenshot, timeout, chromium, chromedriver):
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    profile = tempfile.mkdtemp(prefix="webui-check-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    # Flags known to work headless as root on this machine; no background traffic, a fresh profile.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--lang=en-US",
    ):
        opts.add_argument(flag)
    # selenium-manager would try to download a driver: name Debian's chromedriver explicitly.
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    t0 = time.monotonic()
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(base + "/")
        # With auth off the app signs itself in and lands on a new chat.
        chat_input = wait.until(EC.element_to_be_clickable((By.ID, "chat-input")))
        log(f"UI loaded in {time.monotonic() - t0:.1f}s")

        # Pick the model the way a person does: open the selector, search, click it.
        wait.until(EC.element_to_be_clickable((By.ID, "model-selector-model-button"))).click()
        search = wait.until(EC.element_to_be_clickable((By.ID, "model-search-input")))
        search.send_keys(model["id"])
        label = model.get("name") or model["id"]
        option = wait.until(
            EC.element_to_be_clickable(
                (By.CSS_SELECTOR, f'#model-selector-list button[role="option"][aria-label="Select {css_str(label)} model"]')
            )
        )
        option.click()
        wait.until(
            lambda d: label in (d.find_element(By.ID, "model-selector-model-button").get_attribute("aria-label") or "")
            or label in d.find_element(By.ID, "model-selector-model-button").text
        )
        log(f"picked model {label!r}")

        chat_input = wait.until(EC.element_to_be_clickable((By.ID, "chat-input")))
        chat_input.click()
        chat_input.send_keys(question)
        wait.until(lambda d: question[:6] in d.find_element(By.ID, "chat-input").text)
        send = wait.until(EC.element_to_be_clickable((By.ID, "send-message-button")))
        send.click()
        t_sent = time.monotonic()

        # The answer renders in #response-content-container (a skeleton without text until the
        # first token). Wait for text, then for it to stop growing (the stream ended).
        def answer_text(d):
            els = d.find_elements(By.ID, "response-content-container")
            return els[-1].text.strip() if els else ""

        try:
            WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: answer_text(d) != "")
        except TimeoutException:
            save(driver, screenshot)
            raise CheckFailed(f"no answer text appeared in the UI within {timeout}s (screenshot: {screenshot})")
        log(f"first answer text after {time.monotonic() - t_sent:.1f}s")
        last, stable_since = answer_text(driver), time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = answer_text(driver)
            generating = driver.find_elements(By.CSS_SELECTOR, 'button[aria-label="Stop"]')
            if now != last:
                last, stable_since = now, time.monotonic()
            elif not generating and time.monotonic() - stable_since >= 2.0:
                break
        page = driver.find_element(By.TAG_NAME, "body").text
        if question[:10] not in page:
            save(driver, screenshot)
            raise CheckFailed("the question is not shown in the chat")
        # Text in the response box may be an error notice (e.g. the connection refused): read the
        # stored chat back through the API, where an error is its own field.
        chat_id = driver.current_url.rstrip("/").rsplit("/c/", 1)[-1] if "/c/" in driver.current_url else None
        if not chat_id:
            save(driver, screenshot)
            raise CheckFailed(f"the UI did not open a chat (at {driver.current_url})")
        chat = (http("GET", f"{base}/api/v1/chats/{chat_id}", token=token) or {}).get("chat") or {}
        replies = [m for m in (chat.get("history") or {}).get("messages", {}).values() if m.get("role") == "assistant"]
        if not replies:
            save(driver, screenshot)
            raise CheckFailed(f"chat {chat_id} holds no assistant message")
        reply = replies[-1]
        if reply.get("error"):
            save(driver, screenshot)
            raise CheckFailed(f"the UI shows an error instead of an answer: {json.dumps(reply.get('error'))[:300]} (screenshot: {screenshot})")
        if not (reply.get("content") or "").strip():
            save(driver, screenshot)
            raise CheckFailed(f"the stored answer is empty (screenshot: {screenshot})")
        driver.execute_script("window.scrollTo(0, 0)")
        save(driver, screenshot)
        log(f"browser check passed in {time.monotonic() - t0:.1f}s; answer: {last[:160]!r}")
        return last
    except WebDriverException as e:
        save(driver, screenshot)
        raise CheckFailed(f"browser: {e.msg or e} (screenshot: {screenshot})")
    finally:
        driver.quit()


def css_str(s):
    return s.replace("\\", "\\\\").replace('"', '\\"')


def save(driver, path):
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        driver.save_screenshot(path)
    except Exception as e:  # a screenshot is evidence, not the check itself
        log(f"could not save screenshot {path}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--webui", required=True, help="Open WebUI base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--model", help="model id (default: the first one Open WebUI lists)")
    ap.add_argument("--question", default=QUESTION)
    ap.add_argument("--screenshot", default="docs/webui-fortune.png")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for each answer")
    ap.add_argument("--max-tokens", type=int, default=160, help="answer length cap (API and UI)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    ap.add_argument("--skip-api", action="store_true")
    ap.add_argument("--skip-browser", action="store_true")
    args = ap.parse_args()
    base = args.webui.rstrip("/")
    try:
        token = signin(base)
        model = pick_model(base, token, args.model)
        log(f"using model {model['id']!r}")
        if not args.skip_api:
            api_check(base, token, model, args.question, args.max_tokens, args.timeout)
        if not args.skip_browser:
            prepare_user_settings(base, token, args.max_tokens)
            browser_check(base, token, model, args.question, args.screenshot, args.timeout, args.chromium, args.chromedriver)
    except CheckFailed as e:
        log(f"FAILED: {e}")
        return 1
    log("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
