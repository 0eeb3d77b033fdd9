"""Watch it draw: a page where you type a prompt and see the 64 image tokens arrive one by one.

    python demo.py                  # after the quick start; open the address it prints
    python demo.py --dall_e_checkpoint output/dall_e_colour/latest.pt --port 8001

A standard-library server and one static page (static/demo.html). POST /draw takes the page's
settings as JSON and answers in JSON lines, one event each, as the model samples:

    {"event": "primer", "image": ...}                                    completion: what the model is shown
    {"event": "token", "candidate": c, "step": i, "first": P, "tokens": [...], "image": ...}  each token
    {"event": "candidate", "candidate": c, "image": ..., "score": p, "accepted": ...}  each finished draw
    {"event": "done", "kept": c, "image": ...}

P is the number of primer tokens kept; images are PNG data URLs. The tokens come from
sampling.sample_in_batches, the sampler generate_mnist.py uses, through DallE.generate's on_token
hook: the same prompt, seed and settings give the same image in both. A partial image decodes the
tokens drawn so far with every cell still to come set to the code the dVAE gives an empty patch.
One drawing runs at a time; up to --queue requests wait for it, and the others are answered at
once that the page is busy.
"""

import base64
import binascii
import io
import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image

from captions import check_trained_prompts, encode_prompts
from checkpoints import load_dall_e
from data import read_image_file, to_float
from device import pick_device
from errors import ArgumentParser, UserError, run_main
from flags import CANDIDATES, SAMPLING_TEMPERATURE, check_sampling_args, sampling_options
from rerank import ACCEPT
from sampling import completion_prime, sample_in_batches

PAGE = Path(__file__).resolve().parent / "static" / "demo.html"
MAX_BODY = 2**20  # bytes in one request: a drawn or uploaded primer is far smaller
MAX_CANDIDATES = 16  # draws per request on the page, so that one request holds the queue for seconds, not minutes


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--dall_e_checkpoint", default="output/dall_e/latest.pt", help="default: %(default)s")
    parser.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    parser.add_argument("--host", default="127.0.0.1", help="other interfaces only if you ask (default: %(default)s)")
    parser.add_argument(
        "--queue", type=int, default=4, help="requests that may wait for the drawing (default: %(default)s)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: %(default)s)")
    return parser.parse_args(argv)


def data_url(image):
    """(C, S, S) in [0, 1] -> a PNG data URL, each pixel rounded to 8 bits."""
    pixels = image.mul(255).round().to(torch.uint8).cpu().permute(1, 2, 0).numpy()  # (S, S, C)
    png = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(png, format="PNG")
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")


def read_number(fields, name, kind, default):
    """fields[name] as an int or float (None where default is None and none is given), or UserError."""
    value = fields.get(name, default)
    if value is None and default is None:
        return None
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not whole):
        raise UserError(f"{name} must be {'a whole number' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def read_primer_image(data, channels, image_size):
    """A data URL (PNG, JPEG, WebP or GIF) -> (1, C, S, S) in [0, 1], converted like the training digits."""
    if not isinstance(data, str) or "," not in data:
        raise UserError("the image must be sent as a data URL")
    try:
        raw = base64.b64decode(data.split(",", 1)[1], validate=True)
    except binascii.Error:
        raise UserError("the image is not valid base64")
    with tempfile.NamedTemporaryFile(suffix=".image") as f:
        f.write(raw)
        f.flush()
        try:
            return to_float(read_image_file(f.name, channels, image_size))
        except UserError:
            raise UserError("the image could not be read; give a PNG, JPEG, WebP or GIF")


class Painter:
    """The models, and the queue: one drawing at a time, at most `queue` more requests waiting."""

    def __init__(self, checkpoint_path, device, queue):
        trained = load_dall_e(checkpoint_path, device=device)
        self.model, self.dvae, self.tokenizer = trained.model, trained.dvae, trained.tokenizer
        self.dataset, self.reranker = trained.dataset, trained.reranker
        self.device = device
        d = self.dvae.config
        self.blank = self.dvae.encode(torch.zeros(1, d.channels, d.image_size, d.image_size, device=device)).flatten()
        self.slots = threading.Semaphore(queue + 1)  # the drawing and those waiting for it
        self.drawing = threading.Lock()

    def info(self):
        """What the page needs to lay itself out: sizes, defaults, example prompts."""
        seen = [c for c in self.dataset.concepts if self.dataset.seen(*c)]
        held_out = [c for c in self.dataset.concepts if not self.dataset.seen(*c)]
        step = max(1, len(seen) // 10)
        return {
            "dataset": self.dataset.name,
            "examples": [self.dataset.captions(*c)[i % 3] for i, c in enumerate(seen[::step])][:10],
            "zero_shot": [self.dataset.canonical(c) for c in held_out],
            "grid_size": self.dvae.config.grid_size,
            "codebook_size": self.dvae.config.codebook_size,
            "max_candidates": MAX_CANDIDATES if self.reranker else 1,
            "accept": ACCEPT,
            "defaults": {"temperature": SAMPLING_TEMPERATURE, "candidates": CANDIDATES if self.reranker else 1},
        }

    def parse(self, body):
        """The request's JSON -> the prompt's tokens, the primer and the sampling settings; UserError if bad."""
        try:
            fields = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError("the request is not JSON")
        if not isinstance(fields, dict) or not isinstance(fields.get("prompt"), str):
            raise UserError("the request needs a prompt (text)")
        settings = SimpleNamespace(
            temperature=read_number(fields, "temperature", float, SAMPLING_TEMPERATURE),
            top_k=read_number(fields, "top_k", int, None),
            top_p=read_number(fields, "top_p", float, None),
            guidance=read_number(fields, "guidance", float, 1.0),
            candidates=read_number(fields, "candidates", int, 1),
            batch_size=1,
            precision="auto",
        )
        check_sampling_args(settings, self.dvae.config.codebook_size)
        if settings.candidates > 1 and self.reranker is None:
            raise UserError("this checkpoint holds no reranker; draw 1 candidate")
        if settings.candidates > MAX_CANDIDATES:
            raise UserError(f"at most {MAX_CANDIDATES} candidates on this page (generate_mnist.py takes more)")
        seed = read_number(fields, "seed", int, 0)
        if not 0 <= seed < 2**63:
            raise UserError(f"seed must be between 0 and 2**63 - 1, got {seed}")
        text = encode_prompts(self.tokenizer, [fields["prompt"]])  # (1, T)
        check_trained_prompts(self.tokenizer, self.dataset, [fields["prompt"]], text)
        request = SimpleNamespace(text=text, seed=seed, settings=settings, prime=None, shown=None)
        if fields.get("image") is not None:
            self.parse_primer(fields, request)
        return request

    @torch.no_grad()
    def parse_primer(self, fields, request):
        G, d = self.dvae.config.grid_size, self.dvae.config
        kept_rows = read_number(fields, "kept_rows", int, G // 2)
        if not 0 <= kept_rows <= G:
            raise UserError(f"kept rows must be between 0 and the grid's {G}, got {kept_rows}")
        image = read_primer_image(fields["image"], d.channels, d.image_size).to(self.device)
        request.prime = completion_prime(self.dvae, image, kept_rows)  # (1, kept_rows * G)
        request.shown = image.clone()
        request.shown[..., kept_rows * d.image_size // G :, :] = 0.5  # what the model is not shown: grey

    def watcher(self, text, first, send):
        """(on_token, finished): a hook for DallE.generate that sends each partial grid painted, and each
        finished candidate with the reranker's probability of the prompt; `finished` collects their images."""
        n, G = self.dvae.config.grid_size**2, self.dvae.config.grid_size
        finished, wanted = [], None if self.reranker is None else self.reranker.concept_of(text)[0]

        def on_token(step, tokens):
            grid = torch.cat([tokens[0], self.blank[step + 1 :]]).view(1, G, G)
            image = self.dvae.decode(grid).float()  # (1, C, S, S): what is drawn so far
            c = len(finished)
            send({"event": "token", "candidate": c, "step": step, "first": first, "tokens": tokens[0].tolist(),
                  "image": data_url(image[0])})  # fmt: skip
            if step == n - 1:
                finished.append(image)
                score = None if wanted is None else self.reranker.concept_probabilities(image)[0, wanted].item()
                accepted = None if score is None else score > ACCEPT
                send({"event": "candidate", "candidate": c, "image": data_url(image[0]), "score": score,
                      "accepted": accepted})  # fmt: skip

        return on_token, finished

    @torch.no_grad()
    def draw(self, request, send):
        """Sample for a parsed request as generate_mnist.py does, calling send(event) for every event."""
        text, prime = request.text.to(self.device), request.prime
        if request.shown is not None:
            send({"event": "primer", "image": data_url(request.shown[0])})
        on_token, finished = self.watcher(text, 0 if prime is None else prime.shape[1], send)
        s = request.settings
        reranker = self.reranker if s.candidates > 1 else None
        kept = sample_in_batches(
            self.model, self.dvae, text, 1, request.seed, prime, reranker, s.candidates, on_token=on_token,
            **sampling_options(s),
        )  # fmt: skip
        distances = [(image.cpu() - kept).abs().sum().item() for image in finished]
        kept_index = distances.index(min(distances)) if distances else None
        send({"event": "done", "kept": kept_index, "image": data_url(kept[0])})


class Handler(BaseHTTPRequestHandler):
    timeout = 60  # seconds a silent client may hold its thread

    def do_GET(self):
        if self.path == "/":
            self.reply(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif self.path == "/info":
            self.reply(200, self.server.painter.info())
        else:
            self.reply(404, {"error": f"no page {self.path}; open /"})

    def do_POST(self):
        if self.path != "/draw":
            return self.reply(404, {"error": f"no page {self.path}; POST to /draw"})
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY:
            return self.reply(413, {"error": f"a request must say its length and be at most {MAX_BODY:,} bytes"})
        body, painter = self.rfile.read(int(length)), self.server.painter
        if not painter.slots.acquire(blocking=False):
            return self.reply(503, {"error": "busy: others are drawing; try again in a few seconds"})
        try:
            self.draw(painter, body)
        except (ConnectionError, TimeoutError):
            self.log_message("the page went away mid-drawing")
        finally:
            painter.slots.release()

    def draw(self, painter, body):
        try:
            request = painter.parse(body)
        except UserError as error:
            return self.reply(400, {"error": str(error)})
        with painter.drawing:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()
            painter.draw(request, self.send_line)

    def send_line(self, event):
        self.wfile.write(json.dumps(event).encode() + b"\n")
        self.wfile.flush()

    def reply(self, status, content, content_type="application/json"):
        body = content if isinstance(content, bytes) else json.dumps(content).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    request_queue_size = 64  # connections the OS holds before accepting: each is answered, if only "busy"


def make_server(painter, host, port):
    """A threading HTTP server for the page; port 0 picks a free one (server.server_address)."""
    try:
        server = Server((host, port), Handler)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port")
    server.painter = painter
    return server


def main():
    args = parse_args()
    if args.queue < 0:
        raise UserError(f"--queue must be >= 0, got {args.queue}")
    painter = Painter(args.dall_e_checkpoint, pick_device(args.device), args.queue)
    server = make_server(painter, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"watch it draw: open http://{host}:{port}/ (Ctrl-C stops the server)", flush=True)
    with server:
        server.serve_forever()


if __name__ == "__main__":
    run_main(main)
