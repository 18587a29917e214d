"""The chat page at `/` in a real headless browser (Debian's chromium driven by Playwright): a typed message
gets a reply streamed onto the page from /v1/chat/completions."""

from __future__ import annotations

import shutil

import pytest
from playwright import sync_api

from inference import Generator, SamplingParams
from inference.chat import encode_chat
from tests.inference.serving import running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")


@pytest.mark.slow
def test_typed_message_gets_a_streamed_reply(random_ckpt):
    reference = Generator.from_checkpoint(random_ckpt, "cpu", "fp32")
    message = "Hello there"
    with running_server(random_ckpt, api_key=None) as running, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(running.url + "/")
            page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
            page.fill("#temperature", "0")  # greedy, so the reply is known
            seen: list[str] = []  # the reply's text at each streamed update
            page.expose_function("record", lambda text: seen.append(text))
            page.evaluate("""new MutationObserver(() => {
                const reply = document.querySelector('.assistant');
                if (reply) window.record(reply.textContent);
            }).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true})""")
            page.fill("#input", message)
            page.press("#input", "Enter")
            page.wait_for_selector(".assistant[data-done='true']", timeout=30_000)
            shown = page.text_content(".assistant")
            assert page.query_selector(".error") is None
            assert page.text_content(".user") == message
        finally:
            browser.close()
    # The page sends no max_tokens: the reply may fill the rest of the context.
    conversation = [{"role": "user", "content": message}]
    room = reference.max_seq_len - len(encode_chat(reference.tokenizer, conversation))
    want = "".join(reference.chat(conversation, room, SamplingParams(temperature=0)))
    assert shown == want and shown
    assert len({s for s in seen if s}) > 1  # the reply grew piece by piece on the page
