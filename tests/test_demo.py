"""The watch-it-draw page (demo.py): the token stream, the same sampler as generate_mnist.py, bad input,
a bounded queue, and the page itself in headless Chromium."""

import base64
import http.client
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from captions import encode_prompts
from checkpoints import dall_e_from_checkpoint, load_checkpoint
from conftest import assert_clean_error, run_script
from demo import MAX_BODY, Painter, data_url, make_server
from files import atomic_write
from rerank import ACCEPT
from sampling import completion_prime

QUEUE = 2


@pytest.fixture(scope="module")
def checkpoint(trained):
    return trained["dall_e"] / "latest.pt"


@pytest.fixture(scope="module")
def server(checkpoint):
    """A page server on a free localhost port, in this process; yields (address, painter)."""
    painter = Painter(checkpoint, torch.device("cpu"), QUEUE)
    server = make_server(painter, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[:2], painter
    server.shutdown()
    server.server_close()


def post(address, body, path="/draw", headers=None):
    """POST body (a dict as JSON, or bytes) -> (status, [events] for a stream, else the JSON answer)."""
    connection = http.client.HTTPConnection(*address, timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection.request("POST", path, data, headers or {})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    if response.getheader("Content-Type") == "application/x-ndjson":
        return response.status, [json.loads(line) for line in text.splitlines()]
    return response.status, json.loads(text)


def pixels(url):
    """A PNG data URL -> (C, H, W) float in [0, 1]."""
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as png:
        array = np.asarray(png)  # (H, W) grey or (H, W, C)
    image = torch.from_numpy(array.copy()).float() / 255
    return image.unsqueeze(0) if image.dim() == 2 else image.permute(2, 0, 1)


def png_url(image):
    """(C, H, W) in [0, 1] -> a PNG data URL, as the page sends a drawing."""
    pixels = image.mul(255).byte().permute(1, 2, 0).numpy()  # (H, W, C)
    png = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(png, format="PNG")
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()


def test_watching_the_tokens_does_not_change_them(checkpoint):
    model, dvae, tokenizer = dall_e_from_checkpoint(load_checkpoint(checkpoint, "dall_e"))
    text = encode_prompts(tokenizer, ["seven", "3"])
    prime = torch.randint(0, dvae.config.codebook_size, (2, 20), generator=torch.Generator().manual_seed(0))
    seen = []
    options = {"temperature": 1.3, "top_p": 0.9, "guidance": 2.0}
    plain = model.generate(text, prime=prime, generator=torch.Generator().manual_seed(1), **options)
    watched = model.generate(
        text, prime=prime, generator=torch.Generator().manual_seed(1), on_token=lambda *a: seen.append(a), **options
    )
    assert torch.equal(plain, watched)
    assert [step for step, _ in seen] == list(range(20, 64))  # once per drawn token, in raster order
    assert all(torch.equal(tokens, watched.flatten(1)[:, : step + 1]) for step, tokens in seen)


def test_the_grid_arrives_token_by_token_and_the_kept_candidate_is_marked(server):
    address, _ = server
    status, events = post(address, {"prompt": "seven", "candidates": 3, "seed": 2})
    assert status == 200
    tokens = [e for e in events if e["event"] == "token"]
    candidates = [e for e in events if e["event"] == "candidate"]
    assert [(e["candidate"], e["step"]) for e in tokens] == [(c, i) for c in range(len(candidates)) for i in range(64)]
    assert all(len(e["tokens"]) == e["step"] + 1 and pixels(e["image"]).shape == (1, 32, 32) for e in tokens)
    scores = [e["score"] for e in candidates]
    assert all(0 <= s <= 1 for s in scores) and [e["accepted"] for e in candidates] == [s > ACCEPT for s in scores]
    assert len(candidates) == 3 or scores[-1] > ACCEPT  # drawing stops at the first accepted candidate
    first_accepted = [c for c, s in enumerate(scores) if s > ACCEPT]
    done = events[-1]
    assert done["event"] == "done" and done["kept"] == (first_accepted or [scores.index(max(scores))])[0]
    assert done["image"] == candidates[done["kept"]]["image"]


def test_the_page_and_generate_mnist_draw_the_same_image(server, checkpoint, tmp_path):
    address, _ = server
    settings = {"prompt": "seven", "seed": 5, "candidates": 3, "guidance": 1.5, "top_k": 10, "temperature": 1.1}
    flags = ["--seed", "5", "--candidates", "3", "--guidance", "1.5", "--top_k", "10", "--temperature", "1.1"]
    result = run_script(
        "generate_mnist.py", "--dall_e_checkpoint", checkpoint, "--prompt", "seven", *flags,
        "--output_dir", tmp_path, "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    image = torch.from_numpy(np.load(tmp_path / "samples.npz")["images"][0])
    status, events = post(address, settings)
    assert status == 200 and events[-1]["image"] == data_url(image)
    other_seed = post(address, {**settings, "seed": 6})[1][-1]["image"]
    assert other_seed != data_url(image)  # the seed matters, so the match above is not a coincidence


def test_a_completion_keeps_the_primer_rows_and_draws_the_rest(server):
    address, painter = server
    digit = torch.zeros(1, 28, 28)
    digit[:, 3:6, 4:24], digit[:, 6:25, 18:21] = 1, 1  # a seven: a bar, then a stroke down
    status, events = post(address, {"prompt": "seven", "candidates": 1, "image": png_url(digit), "kept_rows": 3})
    assert status == 200 and events[0]["event"] == "primer"
    shown = pixels(events[0]["image"])
    assert shown[:, 12:].eq(128 / 255).all() and shown[:, :12].max() == 1  # the hidden rows grey, the bar kept
    expected = completion_prime(painter.dvae, torch.nn.functional.pad(digit, (2, 2, 2, 2))[None], 3)
    tokens = [e for e in events if e["event"] == "token"]
    assert [e["step"] for e in tokens] == list(range(24, 64)) and tokens[0]["first"] == 24
    assert tokens[-1]["tokens"][:24] == expected[0].tolist()


TINY_PNG = png_url(torch.zeros(1, 4, 4))


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"{not json", 400, "not JSON"),
        (b"[1, 2]", 400, "needs a prompt"),
        ({"prompt": 7}, 400, "needs a prompt"),
        ({"prompt": "sevn"}, 400, "unknown word 'sevn'"),
        ({"prompt": ""}, 400, "empty prompt"),
        ({"prompt": "seven seven"}, 400, "not trained on prompts like"),
        ({"prompt": "7", "temperature": 0}, 400, "temperature must be between 0.1"),
        ({"prompt": "7", "temperature": "hot"}, 400, "temperature must be a number"),
        ({"prompt": "7", "top_k": 1000}, 400, "top_k must be between 1"),
        ({"prompt": "7", "top_k": 2.5}, 400, "top_k must be a whole number"),
        ({"prompt": "7", "top_p": 0}, 400, "top_p must be between 0.01"),
        ({"prompt": "7", "guidance": -1}, 400, "guidance must be between 0"),
        ({"prompt": "7", "candidates": 0}, 400, "candidates must be between 1"),
        ({"prompt": "7", "candidates": 17}, 400, "at most 16 candidates"),
        ({"prompt": "7", "seed": -1}, 400, "seed must be between 0"),
        ({"prompt": "7", "image": TINY_PNG, "kept_rows": 9}, 400, "kept rows must be between 0"),
        ({"prompt": "7", "image": "data:image/png;base64,%%%"}, 400, "not valid base64"),
        ({"prompt": "7", "image": "data:image/png;base64,aGVsbG8="}, 400, "could not be read"),
        ({"prompt": "7", "image": 3}, 400, "data URL"),
    ],
)
def test_bad_input_gets_one_line_and_the_server_keeps_drawing(server, body, status, fragment):
    address, _ = server
    answer = post(address, body)
    assert answer[0] == status and fragment in answer[1]["error"] and "\n" not in answer[1]["error"]
    assert post(address, {"prompt": "7", "candidates": 1})[1][-1]["event"] == "done"


def test_oversized_requests_and_unknown_pages_are_refused(server):
    address, _ = server
    too_long = post(address, b"{}", headers={"Content-Length": str(MAX_BODY + 1)})
    assert too_long[0] == 413 and "at most" in too_long[1]["error"]
    assert post(address, {"prompt": "7"}, path="/elsewhere")[0] == 404


def test_twenty_requests_at_once_are_each_answered_and_none_hangs(server):
    address, painter = server
    answers = []
    painter.drawing.acquire()  # a drawing in progress: QUEUE + 1 requests may hold a place, the rest are busy
    threads = [threading.Thread(target=lambda: answers.append(post(address, {"prompt": "7"}))) for _ in range(20)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(answers) < 20 - (QUEUE + 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    busy = list(answers)  # answered while the drawing still runs
    painter.drawing.release()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert len(busy) == 20 - (QUEUE + 1) and all(s == 503 and "busy" in a["error"] for s, a in busy)
    drawn = [events for status, events in answers if status == 200]
    assert len(drawn) == QUEUE + 1 and all(events[-1]["event"] == "done" for events in drawn)


def test_a_page_closed_mid_drawing_leaves_the_server_drawing_for_others(server):
    address, _ = server
    connection = http.client.HTTPConnection(*address, timeout=60)
    connection.request("POST", "/draw", json.dumps({"prompt": "7", "candidates": 16}).encode())
    response = connection.getresponse()
    assert json.loads(response.readline())["event"] == "token"
    response.close(), connection.close()
    assert post(address, {"prompt": "7", "candidates": 1})[1][-1]["event"] == "done"


def test_the_script_refuses_a_missing_checkpoint_and_a_taken_port(server, checkpoint, tmp_path):
    assert_clean_error(run_script("demo.py", "--dall_e_checkpoint", tmp_path / "none.pt"), "checkpoint not found")
    taken = run_script("demo.py", "--dall_e_checkpoint", checkpoint, "--port", server[0][1])
    assert_clean_error(taken, "cannot listen on 127.0.0.1", "choose another --port")


BROWSER = shutil.which("chromium") and shutil.which("chromedriver")


def start_browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))


def watch_drawing(driver, timeout=120):
    """Poll the page until its drawing ends; returns the token updates seen on screen before the end."""
    image, seen = driver.find_element(By.ID, "image"), set()
    deadline = time.monotonic() + timeout
    while image.get_attribute("data-state") == "drawing" and time.monotonic() < deadline:
        seen.add(image.get_attribute("data-updates"))
        time.sleep(0.02)
    assert image.get_attribute("data-state") == "done", driver.find_element(By.ID, "message").text
    return {int(n) for n in seen if n}


@pytest.mark.skipif(not BROWSER, reason="no browser: apt-get install chromium chromium-driver (.ci/run does)")
def test_the_page_draws_a_prompt_and_completes_a_stroke_in_a_real_browser(trained, tmp_path):
    """DEMO_CHECKPOINT=output/dall_e/latest.pt DEMO_SCREENSHOT=docs/demo.png remakes the README's screenshot."""
    painter = Painter(os.environ.get("DEMO_CHECKPOINT", trained["dall_e"] / "latest.pt"), torch.device("cpu"), 2)
    server = make_server(painter, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = start_browser()
    try:
        driver.get("http://127.0.0.1:%d/" % server.server_address[1])
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples button"))  # /info read
        set_value = "const e = document.getElementById(arguments[0]); e.value = arguments[1]; e.oninput()"
        driver.execute_script(set_value, "candidates", 1)
        driver.find_element(By.ID, "prompt").send_keys("seven")
        driver.find_element(By.ID, "draw").click()
        assert len(watch_drawing(driver) - {0}) > 1  # the image changed token by token before the end
        image = driver.find_element(By.ID, "image")
        assert image.get_attribute("data-updates") == "64"
        cells = [int(td.text) for td in driver.find_elements(By.CSS_SELECTOR, "#grid td")]
        painted = painter.dvae.decode(torch.tensor(cells).view(1, 8, 8))[0]
        assert image.get_attribute("src") == data_url(painted)  # the picture is the dVAE's painting of the grid
        blank = pixels(data_url(painter.dvae.decode(painter.blank.view(1, 8, 8))[0]))
        final = pixels(image.get_attribute("src"))
        assert (final - blank).abs().max() > 0.02  # a stroke: something drawn where an empty grid paints nothing
        if "DEMO_CHECKPOINT" in os.environ:  # a trained model: a bright stroke on the dark ground
            assert (final > 0.5).sum() >= 20 and final.median() < 0.2

        canvas = driver.find_element(By.ID, "canvas")
        stroke = ActionChains(driver).move_to_element_with_offset(canvas, -90, -100).click_and_hold()
        stroke.move_by_offset(90, 0).move_by_offset(90, 0).move_by_offset(-40, 90).move_by_offset(-40, 90).release()
        stroke.perform()
        driver.execute_script(set_value, "candidates", 4)
        driver.execute_script(set_value, "kept_rows", 3)
        driver.find_element(By.ID, "complete").click()
        assert len(watch_drawing(driver) - {0}) > 1
        shown = pixels(driver.find_element(By.ID, "primer").get_attribute("src"))
        assert shown[:, :12].max() > 0.9 and shown[:, 12:].eq(128 / 255).all()  # the stroke's top kept, rest hidden
        classes = [td.get_attribute("class") for td in driver.find_elements(By.CSS_SELECTOR, "#grid td")]
        assert classes[:24] == ["kept"] * 24 and "kept" not in classes[24:]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#drawn figure")) >= 1
        png = driver.get_screenshot_as_png()
        atomic_write(Path(os.environ.get("DEMO_SCREENSHOT", tmp_path / "demo.png")), lambda f: f.write(png))
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
