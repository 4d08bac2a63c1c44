"""`make demo-real`: the tiny pipeline with render.source=real against a local image server it starts.

The demo captions' URLs point at example.com; offline, this serves one synthetic "photo" per caption
(a drawn scene: sky, ground, a coloured object) on 127.0.0.1, plus a 404 and an opted-out image so the
fetch stage's drop reasons show, writes the captions with those URLs, and runs
`editgen run --profile tiny --set render.source=real`, then validate and preview.

Usage: python examples/demo_real.py OUT
"""

from __future__ import annotations

import io
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
OPTED_OUT, MISSING = 3, 5  # caption rows whose image is opted out (X-Robots-Tag: noai) / gone (404)


def photo(i: int, size: int = 96) -> bytes:
    """A small deterministic scene, different per caption row."""
    img = Image.new("RGB", (size, size), (120 + 9 * i % 100, 170, 230))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, size * 2 // 3, size, size], fill=(90, 140 - 7 * i % 60, 70))
    r, cx = size // 6 + i % 7, size // 4 + (17 * i) % (size // 2)
    draw.ellipse([cx - r, size // 2 - r, cx + r, size // 2 + r], fill=((60 * i) % 256, 80, (200 - 30 * i) % 256))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def serve(n: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            i = int(self.path.strip("/").split(".")[0]) if self.path.strip("/").split(".")[0].isdigit() else -1
            if not 0 <= i < n or i == MISSING:
                self.send_error(404)
                return
            body = photo(i)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            if i == OPTED_OUT:
                self.send_header("X-Robots-Tag", "noai")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def main(out: str) -> int:
    from editgen.cli.main import main as editgen

    rows = [json.loads(line) for line in (HERE / "demo_captions.jsonl").read_text().splitlines() if line.strip()]
    httpd = serve(len(rows))
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    Path(out).mkdir(parents=True, exist_ok=True)
    captions = Path(out).parent / f"{Path(out).name}-captions.jsonl"
    captions.write_text("".join(json.dumps({"TEXT": r["TEXT"], "URL": f"{base}/{i}.jpg"}) + "\n"
                                for i, r in enumerate(rows)))
    try:
        code = editgen(["run", "--profile", "tiny", "--input", str(captions), "--out", out,
                        "--set", "render.source=real", "--set", "render.inversion.method=negative_prompt"])
        for cmd in (["validate", out], ["preview", out]):
            code = code or editgen(cmd)
    finally:
        httpd.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo-real-out"))
