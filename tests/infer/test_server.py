"""The OpenAI-compatible server through the official `openai` client: answers, batching, refusals, keys.

Every client here talks to 127.0.0.1 only and never retries (`max_retries=0`): a refusal or a failure
is seen as it happened, not hidden behind a retry.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import threading

import httpx
import openai
import pytest
from PIL import Image

from crystalvlm.data.templates import Turn
from crystalvlm.infer.decoding.config import DecodingConfig
from crystalvlm.infer.engine import GenerationRequest

from infer_fixtures import API_KEY, MODEL_NAME, SERVER_LIMITS, data_url, png_bytes, png_claiming_size, square_image

QUESTION = "What colour is the square?"


def client(live_server, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server["url"] + "/v1", api_key=api_key, max_retries=0, timeout=60)


def image_message(question: str, *images: Image.Image) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_url(image)}} for image in images]
    return [{"role": "user", "content": parts + [{"type": "text", "text": question}]}]


def engine_answer(engine, question: str, images: list[Image.Image], decoding: str, max_tokens: int) -> str:
    """What the engine itself answers for the request the server builds from `image_message`."""
    turns = [Turn("user", "<image>\n" * len(images) + question)]
    config = DecodingConfig.parse(decoding, max_new_tokens=max_tokens)
    return engine.generate([GenerationRequest(turns, images)], config)[0].text


def assert_still_serves(live_server) -> None:
    answer = client(live_server).chat.completions.create(
        model=MODEL_NAME, messages=image_message(QUESTION, square_image("red")), max_tokens=2)
    assert answer.choices[0].message.content is not None
    assert httpx.get(live_server["url"] + "/health", timeout=10).json()["status"] == "ok"


# ---------------------------------------------------------------------------- answers
def test_answer_equals_the_engine_greedy_answer(live_server, server_engine):
    image = square_image("blue")
    answer = client(live_server).chat.completions.create(
        model=MODEL_NAME, messages=image_message(QUESTION, image), max_tokens=6)
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == engine_answer(server_engine, QUESTION, [image], "greedy", 6)
    assert choice.finish_reason == "length"
    assert answer.model == MODEL_NAME and answer.id.startswith("chatcmpl-")
    prompt_tokens = server_engine.prepare(GenerationRequest([Turn("user", "<image>\n" + QUESTION)], [image])).length
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (prompt_tokens, 6)


def test_streamed_answer_equals_the_plain_answer(live_server):
    api = client(live_server)
    messages = image_message(QUESTION, square_image("green"))
    plain = api.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8)
    chunks = list(api.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, stream=True,
                                              stream_options={"include_usage": True}))
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert len([piece for piece in pieces if piece]) > 1  # streamed in several pieces, not all at the end
    assert "".join(pieces) == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finish == [plain.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_decoding_choice_reaches_the_engine(live_server, server_engine):
    image = square_image("yellow", (60, 30))
    api = client(live_server)
    greedy = engine_answer(server_engine, QUESTION, [image], "greedy", 6)
    for decoding in ("opera:num_beams=2", "beam:num_beams=3"):
        expected = engine_answer(server_engine, QUESTION, [image], decoding, 6)
        answer = api.chat.completions.create(model=MODEL_NAME, messages=image_message(QUESTION, image), max_tokens=6,
                                             extra_body={"decoding": decoding})
        assert answer.choices[0].message.content == expected
        assert answer.model_extra["decoding"] == DecodingConfig.parse(decoding, max_new_tokens=6).describe()
    # The prompt is one on which beam search answers differently from greedy decoding.
    assert engine_answer(server_engine, QUESTION, [image], "beam:num_beams=3", 6) != greedy


def test_models_and_health(live_server):
    models = client(live_server).models.list()
    assert [model.id for model in models.data] == [MODEL_NAME]
    assert client(live_server).models.retrieve(MODEL_NAME).id == MODEL_NAME
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(live_server).models.retrieve("gpt-4o")
    health = httpx.get(live_server["url"] + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["model"] == MODEL_NAME


# ---------------------------------------------------------------------------- concurrency
def test_hundred_concurrent_requests_succeed_and_are_batched(live_server, server_engine):
    batcher = live_server["app"].state.batcher
    batcher.batches_run, batcher.largest_batch = 0, 0
    # Four different requests (question and image), each sent 25 times.
    questions = [(QUESTION, "red"), ("Which is green?", "green"), ("Describe the image briefly.", "blue"),
                 ("Name a colour.", "yellow")]
    images = {colour: square_image(colour) for _, colour in questions}
    expected = [engine_answer(server_engine, question, [images[colour]], "greedy", 8) for question, colour in questions]
    assert len(set(expected)) >= 3  # answers differ per request: a mix-up between requests would show

    async def ask_all() -> list[str]:
        api = openai.AsyncOpenAI(base_url=live_server["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
        limit = asyncio.Semaphore(100)  # all 100 in flight at once, and no more

        async def ask(index: int) -> str:
            question, colour = questions[index % 4]
            messages = image_message(question, images[colour])
            async with limit:
                if index % 5 == 0:  # some stream, the rest do not; they share batches all the same
                    stream = await api.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, stream=True)
                    return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
                answer = await api.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8)
                return answer.choices[0].message.content

        try:
            return await asyncio.gather(*(ask(index) for index in range(100)))
        finally:
            await api.close()

    answers = asyncio.run(ask_all())
    assert answers == [expected[index % 4] for index in range(100)]
    assert batcher.largest_batch > 1
    assert batcher.batches_run < 100


# ---------------------------------------------------------------------------- refusals
def noise_png(side: int) -> bytes:
    """Random pixels: PNG cannot compress them, so the file is about 3 * side^2 bytes."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels))


def png_data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_url_request(url: str) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]}]}


def with_settings(**settings) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": QUESTION}], **settings}


BAD_REQUESTS = {
    "unknown model": ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404,
                      "the model 'gpt-4o' does not exist"),
    "broken base64": (image_url_request("data:image/png;base64,@@not-base64@@"), 400, "not valid base64"),
    "not an image": (image_url_request(png_data_url(b"GIF89a but not really an image")), 400, "not a readable image"),
    "not an image media type": (image_url_request("data:text/plain;base64,aGVsbG8="), 400, "is not an image"),
    "oversized image": (image_url_request(png_data_url(noise_png(160))), 413,
                        f"over the limit of {SERVER_LIMITS['max_image_bytes']}"),
    "too many pixels": (image_url_request(png_data_url(png_bytes(Image.new("RGB", (1200, 1000), "white")))), 400,
                        "1200000 pixels is over the limit of 1000000"),
    "decompression bomb": (image_url_request(png_data_url(png_claiming_size(5000, 5000))), 400,
                           "25000000 pixels is over the limit of 1000000 (possible decompression bomb)"),
    "huge decompression bomb": (image_url_request(png_data_url(png_claiming_size(30000, 30000))), 400,
                                "decompression bomb"),
    "too many images": ({"model": MODEL_NAME, "messages": image_message(QUESTION, *[square_image("red")] * 3)}, 400,
                        "more than 2 images"),
    "negative temperature": (with_settings(temperature=-0.5), 400, "'temperature' must be a number from 0.0 to 2.0"),
    "max_tokens too large": (with_settings(max_tokens=10_000), 400, "'max_tokens' must be an integer from 1 to 64"),
    "max_tokens zero": (with_settings(max_tokens=0), 400, "'max_tokens' must be an integer"),
    "several answers": (with_settings(n=3), 400, "'n' must be 1"),
    "unknown decoding": (with_settings(extra_body={"decoding": "nucleus"}), 400, "unknown strategy 'nucleus'"),
    "bad decoding setting": (with_settings(extra_body={"decoding": "beam:beams=3"}), 400, "unknown setting 'beams'"),
    "decoding not a string": (with_settings(extra_body={"decoding": 3}), 400, "'decoding' must be a string"),
    "remote image": (image_url_request("https://example.com/cat.png"), 400, "remote image URLs are refused"),
    "no messages": ({"model": MODEL_NAME, "messages": []}, 400, "'messages' must be a non-empty array"),
    "image placeholder in text": (with_settings(messages=[{"role": "user", "content": "<image>\nhi"}]), 400,
                                  "send images as image_url parts"),
    "prompt too long": (with_settings(messages=[{"role": "user", "content": "square " * 300}]), 400,
                        "this server accepts at most 300"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_its_4xx_and_the_server_keeps_serving(live_server, name):
    payload, status, message = BAD_REQUESTS[name]
    with pytest.raises(openai.APIStatusError) as caught:
        client(live_server).chat.completions.create(**payload)
    assert caught.value.status_code == status
    assert message in caught.value.message
    error = caught.value.body  # OpenAI's error shape: the client hands over the inner object
    assert set(error) >= {"message", "type", "param", "code"} and message in error["message"]
    assert_still_serves(live_server)


def test_malformed_json_is_refused(live_server):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    for body in (b'{"model": "tiny-llava", "messages": [', b"\xff\xfe", b"[1, 2]"):
        response = httpx.post(live_server["url"] + "/v1/chat/completions", content=body, headers=headers, timeout=10)
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert "not valid JSON" in message or "must be a JSON object" in message
    assert_still_serves(live_server)


def test_api_key_is_required(live_server):
    url = live_server["url"]
    for path, method in (("/v1/models", "GET"), ("/v1/chat/completions", "POST")):
        response = httpx.request(method, url + path, json=with_settings(), timeout=10)  # no Authorization header
        assert response.status_code == 401 and "API key" in response.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError, match="missing or incorrect API key"):
        client(live_server, api_key="wrong-key").chat.completions.create(**with_settings(max_tokens=2))
    with pytest.raises(openai.AuthenticationError):
        client(live_server, api_key="wrong-key").models.list()
    # The page and the health check stay open (the page asks for the key itself).
    assert httpx.get(url + "/", timeout=10).status_code == 200
    assert_still_serves(live_server)


# ---------------------------------------------------------------------------- remote images, when allowed
@pytest.fixture
def loopback_image_host():
    """A one-image HTTP server on 127.0.0.1: /square.png is an image, anything else 404."""
    image = png_bytes(square_image("red"))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server API)
            found = self.path == "/square.png"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            if found:
                self.wfile.write(image)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=10)


def test_remote_images_are_fetched_when_allowed(server_engine, loopback_image_host):
    from fastapi.testclient import TestClient

    from crystalvlm.infer.openai_protocol import ServerLimits
    from crystalvlm.infer.server import build_app

    # Loopback addresses are refused unless the operator allows their network.
    limits = ServerLimits(**{**SERVER_LIMITS, "allow_remote_images": True, "remote_image_networks": ("127.0.0.1/32",)})
    app = build_app(server_engine, MODEL_NAME, limits=limits)  # no API key on this one
    with TestClient(app, base_url="http://localhost") as test_client:
        answer = test_client.post("/v1/chat/completions", json={
            **image_url_request(loopback_image_host + "/square.png"), "max_tokens": 5})
        assert answer.status_code == 200
        expected = engine_answer(server_engine, QUESTION, [square_image("red")], "greedy", 5)
        assert answer.json()["choices"][0]["message"]["content"] == expected
        missing = test_client.post("/v1/chat/completions", json=image_url_request(loopback_image_host + "/gone.png"))
        assert missing.status_code == 400
        assert missing.json()["error"]["message"] == "messages[0].content[0]: the image could not be fetched from its URL"


# ---------------------------------------------------------------------------- the schema
def test_openapi_schema_and_offline_docs_page(live_server):
    url = live_server["url"]
    schema = httpx.get(url + "/openapi.json", timeout=10).json()
    operation = schema["paths"]["/v1/chat/completions"]["post"]
    request_schema = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    components = schema["components"]["schemas"]
    assert request_schema == "ChatCompletionRequest"
    assert {"messages", "model", "max_tokens", "temperature", "stop", "decoding"} <= set(components[request_schema]["properties"])
    assert {"ChatCompletion", "ChatCompletionChunk", "ErrorResponse", "Message", "ModelList"} <= set(components)

    def unresolved(node) -> list[str]:  # every $ref points at a schema that is there
        if isinstance(node, dict):
            return [ref for ref in [node.get("$ref")] if ref and ref.split("/")[-1] not in components] + \
                [found for value in node.values() for found in unresolved(value)]
        return [found for value in node for found in unresolved(value)] if isinstance(node, list) else []

    assert unresolved(schema) == []
    assert set(operation["responses"]) >= {"200", "400", "401", "413", "415", "503"}
    assert set(schema["paths"]) >= {"/v1/chat/completions", "/v1/models", "/v1/models/{model_id}", "/health"}
    page = httpx.get(url + "/docs", timeout=10)
    assert page.status_code == 200 and "openapi.json" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from elsewhere: works offline


def test_the_request_schema_refuses_wrong_types_naming_the_place(live_server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    cases = [
        ({"role": "user", "content": [{"type": "video", "url": "x"}]}, "messages[0].content[0]",
         "'messages[0].content[0]' must be a part with type 'text' or 'image_url'"),
        ({"role": "robot", "content": "hi"}, "messages[0].role", "'messages[0].role' must be 'system', 'developer', "),
        ({"role": "user", "content": 5}, "messages[0].content", "must be a string or a non-empty array of parts, got 5"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, "messages[0].content[0].image_url.url",
         "'messages[0].content[0].image_url.url' is required"),
    ]
    for message, param, text in cases:
        response = httpx.post(live_server["url"] + "/v1/chat/completions", headers=headers, timeout=10,
                              json={"model": MODEL_NAME, "messages": [message]})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == param and text in error["message"] and error["type"] == "invalid_request_error"
    response = httpx.post(live_server["url"] + "/v1/chat/completions", headers=headers, timeout=10,
                          json=with_settings(seed=True, stream="yes"))
    assert response.status_code == 400 and response.json()["error"]["message"] == "'seed' must be an integer, got True"
