"""The web chat page end to end in headless Chromium: pick an image, ask, choose a decoding, watch it stream.

The answer on the page must be the answer the API gives to the same request (same image file, same
question, same decoding), so the page sends what it shows and shows what the server streamed.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from infer_fixtures import API_KEY, MODEL_NAME, SERVER_LIMITS, data_url, square_image

CHROMIUM = Path("/usr/bin/chromium")
MAX_TOKENS = 12

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium (/usr/bin/chromium) is not installed"),
]


def api_answer(live_server, image, question: str, decoding: str) -> str:
    api = openai.OpenAI(base_url=live_server["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    answer = api.chat.completions.create(
        model=MODEL_NAME, max_tokens=MAX_TOKENS, extra_body={"decoding": decoding},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                               {"type": "text", "text": question}]}])
    return answer.choices[0].message.content


@pytest.fixture
def page(live_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(live_server["url"] + "/")
            yield page
        finally:
            browser.close()


def ask(page, image_file: Path, question: str, decoding_label: str):
    """Fill the composer as a user would and send; returns the new answer bubble once it finished."""
    answers_before = page.locator(".message.assistant").count()
    page.set_input_files("#image-input", str(image_file))
    page.wait_for_selector("#image-preview", state="visible")  # the file was read into a data URL
    page.fill("#question", question)
    page.select_option("#decoding", label=decoding_label)
    page.click("#send")
    page.wait_for_selector("#status[data-state=done]", timeout=60_000)
    answers = page.locator(".message.assistant")
    assert answers.count() == answers_before + 1
    return answers.nth(answers_before)


def test_chat_page_streams_the_api_answer(live_server, page, tmp_path):
    image = square_image("blue", (48, 40))
    image_file = tmp_path / "square.png"
    image.save(image_file)
    question = "What colour is the square?"

    assert page.title() == f"crystalvlm chat — {MODEL_NAME}"
    assert page.is_visible("#api-key")  # the server wants a key, so the page asks for it
    page.fill("#api-key", API_KEY)
    # The max-tokens field starts within this server's limit (64 here) and stops there.
    limit = str(SERVER_LIMITS["max_tokens"])
    assert page.get_attribute("#max-tokens", "max") == limit and page.input_value("#max-tokens") == limit
    page.fill("#max-tokens", str(MAX_TOKENS))

    greedy = ask(page, image_file, question, "greedy")
    expected = api_answer(live_server, image, question, "greedy")
    assert expected  # a non-empty answer to compare with
    assert greedy.locator(".text").text_content() == expected
    assert int(greedy.get_attribute("data-chunks")) > 1  # it arrived in several streamed pieces
    assert greedy.locator(".meta").text_content() == "greedy · length"
    user_bubble = page.locator(".message.user").last
    assert user_bubble.locator(".text").text_content() == question
    assert user_bubble.locator("img").get_attribute("src").startswith("data:image/png;base64,")

    # A new chat with another strategy: the page's choice reaches the server.
    page.click("#reset")
    assert page.locator(".message").count() == 0
    beam = ask(page, image_file, question, "beam search (3 beams)")
    assert beam.locator(".text").text_content() == api_answer(live_server, image, question, "beam:num_beams=3")
    assert beam.locator(".meta").text_content().startswith("beam:num_beams=3")


def test_chat_page_shows_refusals(live_server, page, tmp_path):
    """A wrong key gets the server's message on the page, and the page keeps working after it."""
    image_file = tmp_path / "square.png"
    square_image("red").save(image_file)
    page.fill("#api-key", "wrong-key")
    page.set_input_files("#image-input", str(image_file))
    page.fill("#question", "What colour?")
    page.click("#send")
    page.wait_for_selector("#status[data-state=error]", timeout=30_000)
    assert "missing or incorrect API key" in page.locator(".message.assistant.error").text_content()
    page.fill("#api-key", API_KEY)
    page.fill("#max-tokens", "4")
    page.fill("#question", "What colour?")
    page.click("#send")  # the image was kept for the retry
    page.wait_for_selector("#status[data-state=done]", timeout=60_000)
    assert page.locator(".message.user img").count() == 2


def test_chat_page_sends_several_images_in_order(live_server, page, tmp_path):
    """Two images chosen at once go with the question in the order chosen: the page's answer is the
    API's answer to the same two images, and the user's bubble shows both."""
    red, blue = square_image("red"), square_image("blue", (40, 56))
    files = [tmp_path / "red.png", tmp_path / "blue.png"]
    red.save(files[0])
    blue.save(files[1])
    page.fill("#api-key", API_KEY)
    page.fill("#max-tokens", str(MAX_TOKENS))
    page.set_input_files("#image-input", [str(file) for file in files])
    page.wait_for_function("document.querySelectorAll('#image-preview img').length === 2")
    page.fill("#question", "Which image is red?")
    page.click("#send")
    page.wait_for_selector("#status[data-state=done]", timeout=60_000)
    api = openai.OpenAI(base_url=live_server["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    expected = api.chat.completions.create(
        model=MODEL_NAME, max_tokens=MAX_TOKENS,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(red)}},
                                               {"type": "image_url", "image_url": {"url": data_url(blue)}},
                                               {"type": "text", "text": "Which image is red?"}]}]).choices[0].message.content
    assert page.locator(".message.assistant .text").last.text_content() == expected
    sources = [page.locator(".message.user img").nth(i).get_attribute("src") for i in range(2)]
    assert page.locator(".message.user img").count() == 2
    assert sources[0] != sources[1] and all(src.startswith("data:image/png;base64,") for src in sources)
