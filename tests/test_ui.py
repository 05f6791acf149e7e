"""`fullchain ui`: the web console and the agent route of the Serve app, over a real run (tiny_run) and real Serve.

The JSON routes are checked over HTTP; the pages are driven in Debian's headless Chromium through Selenium and
Debian's chromium-driver (`make test` apt-installs chromium, chromium-driver and fonts-noto-cjk; nothing downloads
a browser). Every browser test saves a screenshot under its tmp dir (kept when it fails) and fails on any console
error of the pages it opened.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO, free_port

pytestmark = [pytest.mark.ray, pytest.mark.e2e]
KEY = "sk-console-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def console(tiny_run, ray_session):
    """The tiny run's console: its pretrained base with the run's LoRA adapter, the agent's tools, an API key."""
    from jobs.ui import plan, start_console, stop_console

    p = plan(tiny_run, [f"serve.api_keys=[{KEY}]"], None, free_port(), None)
    url = start_console(p, app_name="ui-test")
    try:
        yield {"url": url, "plan": p, "run": tiny_run}
    finally:
        stop_console("ui-test")


def _events(r: httpx.Response) -> list[dict]:
    return [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:") and "[DONE]" not in line]


# ---------------------------------------------------------------------------------------------- JSON routes

def test_console_shell_is_open_and_its_data_needs_the_key(console):
    url = console["url"]
    page = httpx.get(f"{url}/ui/", timeout=30)
    assert page.status_code == 200 and "fullchain console" in page.text and "/ui/static/console.js" in page.text
    assert "http" not in page.text.split("<body>", 1)[1].replace("http://www.w3.org", "")  # no CDN, no outside URL
    js = httpx.get(f"{url}/ui/static/console.js", timeout=30)
    assert js.status_code == 200 and "readSSE" in js.text
    for path in ("/ui/api/runs", "/ui/api/config", "/v1/models"):
        r = httpx.get(url + path, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
    r = httpx.post(f"{url}/v1/agent/chat", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 401
    runs = httpx.get(f"{url}/ui/api/runs", headers=AUTH, timeout=30).json()
    assert [r["name"] for r in runs["runs"]] == ["tiny"]
    assert {s["stage"]: s["status"] for s in runs["runs"][0]["stages"]} == dict.fromkeys(
        ["data", "pretrain", "finetune", "evaluate", "serve", "agent"], "complete")
    bad = httpx.get(f"{url}/ui/api/runs/..%2F..%2Fetc", headers=AUTH, timeout=30)
    assert bad.status_code in (400, 404)
    missing = httpx.get(f"{url}/ui/api/runs/nope", headers=AUTH, timeout=30)
    assert missing.status_code == 404 and "no run 'nope'" in missing.json()["error"]["message"]
    assert "/ui/api/runs" in missing.json()["error"]["message"]   # where the runs are listed


def test_models_carry_their_lineage(console):
    run = console["run"]
    manifest = json.loads((run / "manifest.json").read_text())
    cards = {c["id"]: c for c in httpx.get(f"{console['url']}/v1/models", headers=AUTH, timeout=30).json()["data"]}
    assert set(cards) == {"fullchain", "fullchain:tiny"}
    lin = cards["fullchain:tiny"]["lineage"]
    assert lin["kind"] == "adapter" and lin["path"] == manifest["stages"]["finetune"]["outputs"]["adapter"]
    assert lin["run"]["name"] == "tiny" and lin["training"]["stage"] == "finetune"
    assert lin["training"]["config"]["method"] == manifest["stages"]["finetune"]["config"]["method"]
    assert lin["base"]["hf"] == manifest["stages"]["finetune"]["outputs"]["base_hf"]
    assert lin["data"]["shards"]["train_dir"] == manifest["stages"]["data"]["outputs"]["train_dir"]
    results = json.loads(Path(manifest["stages"]["evaluate"]["outputs"]["results_json"]).read_text())["results"]
    assert set(lin["eval"]["scores"]) == set(results["finetune"])
    acc = results["finetune"]["arc_easy"]["metrics"]["acc"]
    assert lin["eval"]["scores"]["arc_easy"] == {"metric": "acc", "value": acc, "n": results["finetune"]["arc_easy"]["n"]}
    base = cards["fullchain"]["lineage"]   # the tiny run fine-tunes its own pretrain: the base has a run too
    assert base["training"]["stage"] == "pretrain" and base["eval"]["label"] == "pretrain"


def test_run_view_has_curves_eval_table_and_data_card(console):
    v = httpx.get(f"{console['url']}/ui/api/runs/tiny", headers=AUTH, timeout=30).json()
    rows = [json.loads(line) for line in (console["run"] / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert v["curves"]["pretrain"]["series"]["loss"] == [[r["step"], r["loss"]] for r in rows if "loss" in r]
    assert len(v["curves"]["finetune"]["series"]["loss"]) >= 2
    assert {r["task"] for r in v["eval"]["rows"]} >= {"perplexity", "arc_easy", "arith_tool"}
    assert set(v["eval"]["models"]) >= {"finetune", "pretrain"}
    card = v["data_card"]
    assert card["status"] == "complete" and card["metrics"]["train_tokens"] > 0
    m = card["metrics"]
    assert f"read {m['read']} = kept {m['kept']}" in card["markdown"] and "(reconciles)" in card["markdown"]
    assert card["card"]["by_source"] == m["by_source"]
    assert set(v["models"]) >= {"pretrain.hf", "finetune.adapter"}


def test_agent_route_runs_the_tools_on_the_server(console):
    url = console["url"]
    info = httpx.get(f"{url}/v1/agent", headers=AUTH, timeout=30).json()
    assert info["tools"] == ["calculator", "python"]   # the run's agent.tools
    body = {"model": "fullchain:tiny", "messages": [{"role": "user", "content": "What is 4821 + 937?"}],
            "tool_choice": "required", "tools": ["calculator"], "max_steps": 2, "max_tokens": 640}
    r = httpx.post(f"{url}/v1/agent/chat", json=body, headers=AUTH, timeout=300)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    ev = _events(r)
    kinds = [e["type"] for e in ev]
    assert kinds[0] == "reply" and kinds[-1] == "done", kinds
    calls = [e for e in ev if e["type"] == "tool_result"]
    # required: the first reply is a call, decoded under the calculator's grammar (its expression at most
    # EXPRESSION_MAX_CHARS long), so even the tiny model's call closes, parses and validates
    assert calls and calls[0]["name"] == "calculator" and calls[0]["valid"]
    assert (calls[0]["result"] if calls[0]["ok"] else calls[0]["error"])
    done = ev[-1]
    assert done["messages"][1]["tool_calls"][0]["function"]["name"] == "calculator"
    assert done["messages"][2]["role"] == "tool"

    bad = httpx.post(f"{url}/v1/agent/chat", headers=AUTH, timeout=30,
                     json={**body, "messages": [{"role": "assistant", "content": "x"}]})
    assert bad.status_code == 400 and "user" in bad.json()["error"]["message"]
    bad = httpx.post(f"{url}/v1/agent/chat", headers=AUTH, timeout=30, json={**body, "tools": ["shell"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tools"
    bad = httpx.post(f"{url}/v1/agent/chat", headers=AUTH, timeout=30, json={**body, "model": "fullchain:nope"})
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "model_not_found"


def test_ui_command_usage(tmp_path):
    exe = shutil.which("fullchain") or str(Path(sys.executable).parent / "fullchain")
    h = subprocess.run([exe, "ui", "--help"], capture_output=True, text=True, timeout=120)
    assert h.returncode == 0 and "RUN_DIR" in h.stdout and "--port" in h.stdout
    r = subprocess.run([exe, "ui", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a run folder" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------- the browser

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.fail(f"{CHROMIUM} / {DRIVER} missing: `make test` installs Debian's chromium, chromium-driver and "
                    "fonts-noto-cjk (apt-get install -y chromium chromium-driver fonts-noto-cjk)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser, console, tmp_path, request):
    """The console opened with the API key stored; after the test, its screenshot and no console errors."""
    browser.get_log("browser")   # drop what an earlier test left
    browser.get(f"{console['url']}/ui/static/console.css")   # same origin, no API call: store the key first
    browser.execute_script("localStorage.setItem('fullchain.apiKey', arguments[0])", KEY)
    browser.get(f"{console['url']}/ui/#chat")
    _wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    yield browser
    shot = tmp_path / f"{request.node.name}.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"console errors: {errors}"


def _wait(driver, cond, timeout=240):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(cond)


def _send(driver, text):
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()


def _last_answer(driver):
    """The last assistant message once it finished (class done), with how many times its text changed meanwhile."""
    from selenium.webdriver.common.by import By

    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant.done"))
    return driver.find_elements(By.CSS_SELECTOR, ".msg.assistant.done")[-1]


def test_chat_streams_the_answer(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    models = [o.get_attribute("value") for o in Select(page.find_element(By.ID, "model")).options]
    assert models == ["fullchain", "fullchain:tiny"]
    assert Select(page.find_element(By.ID, "model")).first_selected_option.text == "fullchain:tiny"
    page.find_element(By.ID, "max-tokens").clear()
    page.find_element(By.ID, "max-tokens").send_keys("24")
    # count the answer's text changes as they arrive: a streamed answer grows in several steps
    page.execute_script("""
        window.__updates = 0;
        new MutationObserver(() => { window.__updates++; })
          .observe(document.getElementById('messages'), {subtree: true, characterData: true, childList: true});""")
    _send(page, "Tell me a story about the sea.")
    msg = _last_answer(page)
    # the tiny model's greedy answer may be blank lines: what streamed in is the raw text, not the visible one
    text = msg.find_element(By.CSS_SELECTOR, ".content").get_attribute("textContent")
    assert text and "error" not in msg.get_attribute("class")
    assert page.execute_script("return window.__updates") >= 4   # the user and empty bubbles, then >= 2 pieces
    assert page.find_element(By.ID, "stop").get_attribute("disabled") is not None
    page.find_element(By.CSS_SELECTOR, ".msg.assistant.done .copy").click()   # copy, with or without clipboard


def test_chinese_text_renders(page):
    from selenium.webdriver.common.by import By

    zh = "你好，请用中文介绍一下长城。"
    page.find_element(By.ID, "max-tokens").clear()
    page.find_element(By.ID, "max-tokens").send_keys("8")
    _send(page, zh)
    _last_answer(page)
    user = page.find_elements(By.CSS_SELECTOR, ".msg.user .content")[-1]
    assert user.text == zh
    # a glyph drawn in the page's font differs from the missing-glyph box (U+E000 has no glyph in any font here)
    differs = page.execute_script("""
        const font = getComputedStyle(document.body).fontFamily;
        function pixels(ch) {
          const c = document.createElement('canvas'); c.width = 40; c.height = 40;
          const g = c.getContext('2d'); g.font = '32px ' + font; g.fillText(ch, 2, 32);
          return Array.from(g.getImageData(0, 0, 40, 40).data).join(',');
        }
        const blank = pixels(' ');
        return [pixels('长') !== pixels('\\uE000'), pixels('长') !== blank, pixels('城') !== pixels('长')];""")
    assert differs == [True, True, True]


def test_agent_shows_the_tool_call_and_its_result(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(page.find_element(By.ID, "model")).select_by_value("fullchain:tiny")
    page.find_element(By.ID, "use-tools").click()
    Select(page.find_element(By.ID, "tool-choice")).select_by_value("calculator")   # the named function
    page.find_element(By.ID, "max-tokens").clear()
    page.find_element(By.ID, "max-tokens").send_keys("640")
    _send(page, "What is 4821 + 937?")
    msg = _last_answer(page)
    call = msg.find_element(By.CSS_SELECTOR, ".tool-call").text
    result = msg.find_element(By.CSS_SELECTOR, ".tool-result").text
    assert call.startswith("→ calculator(") and '"expression"' in call
    assert result.startswith("← ") and len(result) > 2
    # the tiny model's 500-character expression can leave the next step no room in its 1024-token context: the
    # turn then stops with that reason, shown under the call
    assert msg.get_attribute("data-stopped")


def test_run_page_draws_curves_and_lists_eval_tasks(page):
    from selenium.webdriver.common.by import By

    page.find_element(By.ID, "nav-runs").click()
    _wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs-table a.run-link"))
    page.find_element(By.CSS_SELECTOR, "#runs-table a.run-link").click()
    _wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#charts polyline"))
    lines = page.find_elements(By.CSS_SELECTOR, "#charts svg[data-title^='pretrain'] polyline[data-series='loss']")
    assert lines and len(lines[0].get_attribute("points").split()) >= 2
    tasks = {tr.get_attribute("data-task") for tr in page.find_elements(By.CSS_SELECTOR, "#eval-table tbody tr")}
    assert tasks >= {"perplexity", "arc_easy", "arith_tool"}
    header = [th.text for th in page.find_elements(By.CSS_SELECTOR, "#eval-table thead th")]
    assert "finetune" in header and "pretrain" in header   # side by side
    states = [td.text for td in page.find_elements(By.CSS_SELECTOR, "#stages tbody td:nth-child(2)")]
    assert states == ["complete"] * 6


def test_lineage_leads_from_the_model_to_its_data_card(page):
    from selenium.webdriver.common.by import By

    page.find_element(By.ID, "model-lineage").click()
    _wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#view-lineage .node"))
    titles = [h.text for h in page.find_elements(By.CSS_SELECTOR, "#view-lineage .node h4")]
    assert titles[0] == "Model (adapter)" and any(t.startswith("Training run: tiny / finetune") for t in titles)
    assert any(t.startswith("Eval scores") for t in titles)
    page.find_element(By.CSS_SELECTOR, "#view-lineage a.data-card-link").click()
    _wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#data-card #data-counts"))
    assert page.current_url.endswith("#run/tiny/data")
    counts = {tr.find_element(By.TAG_NAME, "th").text: tr.find_element(By.TAG_NAME, "td").text
              for tr in page.find_elements(By.CSS_SELECTOR, "#data-counts tr")}
    assert int(counts["train_tokens"]) > 0
    time.sleep(0.2)   # the scroll to the card settles before the screenshot
