"""Several images in one request: the engine batches them beside one-image requests (sharing only the
images that are the same), the server takes several `image_url` parts through the `openai` client, and
`crystalvlm generate` / `chat` take several images."""

from __future__ import annotations

import io

import openai
import pytest

from crystalvlm.cli import main
from crystalvlm.data.templates import Turn
from crystalvlm.infer.decoding.config import DecodingConfig
from crystalvlm.infer.engine import GenerationRequest

from infer_fixtures import API_KEY, MODEL_NAME, data_url, square_image

MAX_NEW = 6
QUESTION = "Which image is red? Answer first or second."


def answer_alone(engine, turns: list[Turn], images, max_new: int = MAX_NEW):
    return engine.generate([GenerationRequest(turns, list(images))], DecodingConfig(max_new_tokens=max_new))[0]


def test_two_image_requests_batch_beside_one_image_requests(sharp_engine):
    """Same first image, different second images: the batch computes the first image once and each second
    image for its own request, and every answer is the one the request gets alone."""
    red, green, blue = square_image("red"), square_image("green"), square_image("blue")
    requests = [
        GenerationRequest([Turn("user", "<image>\n<image>\n" + QUESTION)], [red, green]),
        GenerationRequest([Turn("user", "<image>\nWhat colour is the square?")], [red]),
        GenerationRequest([Turn("user", "<image>\n<image>\n" + QUESTION)], [red, blue]),
        GenerationRequest([Turn("user", "<image>\n<image>\n" + QUESTION)], [green, red]),
    ]
    seen: list[int] = []
    hook = sharp_engine.model.model.vision_tower.register_forward_pre_hook(
        lambda _module, args, kwargs: seen.append(kwargs.get("pixel_values", args[0] if args else None).shape[0]),
        with_kwargs=True)
    saved = sharp_engine.batch_size
    try:
        sharp_engine.batch_size = 4
        batched = sharp_engine.generate(requests[:3], DecodingConfig(max_new_tokens=MAX_NEW))
    finally:
        sharp_engine.batch_size = saved
        hook.remove()
    alone = [answer_alone(sharp_engine, request.turns, request.images) for request in requests]
    assert [result.token_ids for result in batched] == [result.token_ids for result in alone[:3]]
    # The prefix plan encoded red once for the three requests that start with it, then green and blue
    # each for its own request: 3 images, not 5 (the second images are never shared).
    assert sum(seen) == 3
    # The sharp model's answer follows the images: different pairs (or the same pair swapped), different answers.
    assert len({tuple(result.token_ids) for result in alone}) >= 3


def test_image_count_mismatch_is_refused_naming_the_request(engine):
    from crystalvlm.infer.prompts import RequestError

    with pytest.raises(RequestError, match=r"request 1: the conversation has 2 <image> placeholder\(s\) but 1 image"):
        engine.generate([GenerationRequest([Turn("user", "Name a colour.")]),
                         GenerationRequest([Turn("user", "<image>\n<image>\nWhich?")], [square_image("red")])],
                        DecodingConfig(max_new_tokens=2))


# ---------------------------------------------------------------------------- the server, through openai
def client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def image_part(image) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(image)}}


@pytest.mark.parametrize("layout", ["images first", "interleaved"])
def test_server_answers_a_two_image_request(live_server, server_engine, layout):
    first, second = square_image("red"), square_image("blue", (40, 56))
    if layout == "images first":
        content = [image_part(first), image_part(second), {"type": "text", "text": QUESTION}]
        text = "<image>\n<image>\n" + QUESTION
    else:
        content = [{"type": "text", "text": "First:"}, image_part(first), {"type": "text", "text": "Second:"},
                   image_part(second), {"type": "text", "text": QUESTION}]
        text = "First:\n<image>\nSecond:\n<image>\n" + QUESTION
    answer = client(live_server).chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": content}], max_tokens=MAX_NEW)
    expected = answer_alone(server_engine, [Turn("user", text)], [first, second])
    assert answer.choices[0].message.content == expected.text
    assert answer.usage.prompt_tokens == expected.prompt_tokens


def test_server_refuses_more_images_than_its_limit(live_server):
    images = [image_part(square_image(colour)) for colour in ("red", "green", "blue")]  # the test server allows 2
    with pytest.raises(openai.BadRequestError, match="more than 2 images in one request"):
        client(live_server).chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": images + [{"type": "text", "text": QUESTION}]}],
            max_tokens=2)


# ---------------------------------------------------------------------------- generate and chat
@pytest.fixture(scope="module")
def two_image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_images")
    square_image("red").save(folder / "red.png")
    square_image("blue", (60, 30)).save(folder / "blue.png")
    return folder


def read_image(path):
    from crystalvlm.data.images import decode_image_bytes

    return decode_image_bytes(path.read_bytes())


@pytest.mark.parametrize("prompt, text", [
    (QUESTION, "<image>\n<image>\n" + QUESTION),
    ("First: <image> second: <image> " + QUESTION, "First: <image> second: <image> " + QUESTION),
])
def test_generate_takes_several_images(sharp_checkpoint, sharp_engine, two_image_files, capsys, prompt, text):
    red, blue = two_image_files / "red.png", two_image_files / "blue.png"
    code = main(["generate", str(sharp_checkpoint), "--image", str(red), "--image", str(blue), "--prompt", prompt,
                 "--max-new-tokens", str(MAX_NEW)])
    expected = answer_alone(sharp_engine, [Turn("user", text)], [read_image(red), read_image(blue)])
    assert code == 0
    assert capsys.readouterr().out == expected.text + "\n"


def test_chat_image_command_takes_several_paths(sharp_checkpoint, sharp_engine, two_image_files, monkeypatch, capsys):
    red, blue = two_image_files / "red.png", two_image_files / "blue.png"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/image {red} {blue}\n{QUESTION}\n/quit\n"))
    code = main(["chat", str(sharp_checkpoint), "--max-new-tokens", str(MAX_NEW)])
    expected = answer_alone(sharp_engine, [Turn("user", "<image>\n<image>\n" + QUESTION)], [read_image(red), read_image(blue)])
    assert code == 0
    assert capsys.readouterr().out == f"(new chat about {red}, {blue})\nassistant> {expected.text}\n"
