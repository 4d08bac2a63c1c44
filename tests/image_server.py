"""A local image server for tests: 127.0.0.1, an ephemeral port, one daemon thread per request (and
`DripServer`, a raw TCP server that drips bytes, e.g. a TLS handshake that never ends).

    with ImageServer() as server:
        url = server.url("photo.png")        # server.base_url + "/photo.png"
        server.count("flaky.png")            # requests seen for that path

Every image is generated in code (no network, no files) and identical on every run, so a URL's bytes
are stable. `_routes()` lists what each path does: the good images the fetch stage keeps and the
failure each drop reason is tested with. `add_image(name, image)` serves more (e.g. for a real-image
render test); `captions_parquet` writes an ingest input whose URLs point at the server.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import random
import socketserver
import ssl
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

DRIP_S = 0.2
#: A redirect hop's delay: just under a test's fetch.max_seconds of 0.8, so that the deadline falls right
#: after the second hop starts (checking it only between hops overshoots by ~0.7 s).
HOP_DELAY_S = 0.75


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "image/png"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the status line: a read timeout for the client
    length: bool = True  # send Content-Length (False: the body ends when the connection closes)
    drip_s: float = 0.0  # send the body one byte every drip_s seconds (each read well within a timeout)
    drip_headers: bool = False  # with drip_s: drip an endless header line instead, so headers never end


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth RGB picture (compresses like a photo, decodes to known-ish colours)."""
    img = Image.new("RGB", (width, height))
    img.putdata([((x * 255 // max(1, width - 1) + seed) % 256, (y * 255 // max(1, height - 1)) % 256,
                  (seed * 37) % 256) for y in range(height) for x in range(width)])
    return img


def halves(width: int, height: int, left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    """Left half one colour, right half another: shows which way an image was turned."""
    img = Image.new("RGB", (width, height), right)
    img.paste(left, (0, 0, width // 2, height))
    return img


def exif_rotated_jpeg() -> bytes:
    """96x64 as stored, red left / blue right, EXIF orientation 6 (shown turned 90° clockwise): upright it
    is 64x96 with red on top and blue below."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(halves(96, 64, (255, 0, 0), (0, 0, 255)), "JPEG", quality=95, exif=exif.tobytes())


def png_bomb(width: int, height: int, mode: str = "RGBA") -> bytes:
    """A valid PNG of width x height black pixels (RGBA or RGB, 8 bits), written row by row so that
    making it never holds the decoded image: a small file (zlib shrinks zeros ~1000x) that decodes huge."""
    color_type, channels = {"RGB": (2, 3), "RGBA": (6, 4)}[mode]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer, row = zlib.compressobj(9), bytes(1 + width * channels)  # filter byte 0 + the row's zeros
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _routes() -> dict[str, Reply]:
    png = encode(gradient(96, 64))
    jpeg = encode(gradient(120, 80, seed=3), "JPEG", quality=90)
    noise = encode(Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3)))
    return {
        "photo.png": Reply(body=png),
        "photo.jpg": Reply(body=jpeg, content_type="image/jpeg"),
        "wide.png": Reply(body=encode(gradient(128, 32, seed=5))),
        "octet.png": Reply(body=png, content_type="application/octet-stream"),
        "exif6.jpg": Reply(body=exif_rotated_jpeg(), content_type="image/jpeg"),
        "redirect": Reply(status=302, headers={"Location": "/photo.png"}, content_type="text/html"),
        "missing.png": Reply(status=404, body=b"not found", content_type="text/html"),
        "slow.png": Reply(body=png, delay_s=3.0),
        "page.html": Reply(body=b"<html><body>an image page</body></html>", content_type="text/html"),
        "text.png": Reply(body=b"this is not an image, whatever its name says" * 4),
        "truncated.jpg": Reply(body=jpeg[: len(jpeg) // 2], content_type="image/jpeg"),
        "noai.png": Reply(body=png, headers={"X-Robots-Tag": "noai"}),
        "noimageai-ours.png": Reply(body=png, headers={"X-Robots-Tag": "editgen: noimageai, nofollow"}),
        "noai-other-bot.png": Reply(body=png, headers={"X-Robots-Tag": "otherbot: noai"}),
        "pixel.png": Reply(body=encode(Image.new("RGB", (1, 1), (10, 20, 30)))),
        "large.png": Reply(body=noise),  # ~12 KB: over a small fetch.max_bytes, by Content-Length
        "large-stream.png": Reply(body=noise, length=False),  # the same, cut while streaming
        "many-pixels.png": Reply(body=encode(Image.new("L", (1100, 1000), 128))),  # 1.1 MP, a 5 KB file
        "flaky.png": Reply(body=png),  # 503 for the first `flaky_failures` requests, then 200
        "error.png": Reply(status=500, body=b"internal error", content_type="text/plain"),
        "drip-body.png": Reply(body=png, drip_s=DRIP_S),  # headers at once, then a byte per DRIP_S
        "drip-headers.png": Reply(body=png, drip_s=DRIP_S, drip_headers=True),  # headers never end
        # hop/N: a redirect to hop/N-1 (hop/0 to photo.png), each answered after HOP_DELAY_S
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # not 5: a worker's threads connect at once, and a SYN dropped from a full
    # backlog is resent after 1 s, past the tests' connect timeouts (flaky.png then saw one request)


class ImageServer:
    """Serves `_routes()` (and `add_image`s) on 127.0.0.1 until `close()` (or the `with` block ends)."""

    def __init__(self, flaky_failures: int = 1, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.routes = _routes()
        self.flaky_failures = flaky_failures
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.closing = threading.Event()  # ends every drip
        self.httpd = _Server(("127.0.0.1", port), self._handler())
        if tls is not None:  # HTTPS (see `tls_context`); the handshake runs as each connection is accepted
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.base_url = f"{'https' if tls else 'http'}://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="image-server", daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def count(self, name: str) -> int:
        with self._lock:
            return self.counts[name]

    def add_image(self, name: str, image: Image.Image | bytes, fmt: str = "PNG") -> str:
        """Serve `image` (a PIL image, encoded as `fmt`, or ready bytes) at /name; returns its URL."""
        body = image if isinstance(image, bytes) else encode(image, fmt)
        ctype = "image/jpeg" if fmt.upper() in ("JPEG", "JPG") else f"image/{fmt.lower()}"
        self.routes[name] = Reply(body=body, content_type=ctype)
        return self.url(name)

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ImageServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reply(self, name: str) -> Reply:
        with self._lock:
            self.counts[name] += 1
            seen = self.counts[name]
        if name == "flaky.png" and seen <= self.flaky_failures:
            return Reply(status=503, body=b"busy", content_type="text/plain", headers={"Retry-After": "0"})
        if name.startswith("hop/") and name[4:].isdigit():
            n = int(name[4:])
            return Reply(status=302, content_type="text/html", delay_s=HOP_DELAY_S,
                         headers={"Location": f"/hop/{n - 1}" if n else "/photo.png"})
        return self.routes.get(name) or Reply(status=404, body=b"no such image", content_type="text/plain")

    def _handler(self) -> Callable[..., BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                reply = server._reply(self.path.lstrip("/").split("?")[0])
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.drip_headers:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Padding: ")
                    self.drip(b"a" * 100_000, reply.drip_s)
                    return
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if reply.length:
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.drip_s:
                    self.drip(reply.body, reply.drip_s)
                    return
                try:
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading (a body over its limit)

            def drip(self, data: bytes, gap: float) -> None:
                drip(self.wfile.write, data, gap, server.closing)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                return

        return Handler


def drip(write: Callable[[bytes], object], data: bytes, gap: float, stop: threading.Event) -> None:
    """One byte of `data` every `gap` seconds until it is all sent, the client hangs up or `stop` is set."""
    for i in range(len(data)):
        if stop.wait(gap):
            return
        try:
            write(data[i:i + 1])
        except OSError:  # the client gave up: this thread ends too
            return


def tls_context(folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context whose certificate (for 127.0.0.1) is signed by a CA made here, and that CA's
    PEM file: a client trusting it gets a verified connection, any other client a verification error."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
             ca: bool) -> x509.Certificate:
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(cert("test CA", ca_key, "test CA", ca_key, True).public_bytes(pem))
    (folder / "server.pem").write_bytes(cert("127.0.0.1", key, "test CA", ca_key, False).public_bytes(pem)
                                        + key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.pem")
    return context, folder / "ca.pem"


class DripServer:
    """Raw TCP on 127.0.0.1: every connection gets `payload` one byte per `gap` seconds, whatever it sends.
    The default payload opens a 16 KiB TLS handshake record, so a TLS client waits in its handshake."""

    def __init__(self, payload: bytes = b"\x16\x03\x03\x40\x00" + b"\x00" * 16384, gap: float = DRIP_S) -> None:
        outer = self
        self.closing = threading.Event()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                drip(self.request.sendall, payload, gap, outer.closing)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="drip-server", daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> DripServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def captions_parquet(path: Path, server: ImageServer, names: list[str]) -> Path:
    """An ingest input (TEXT, URL parquet): one distinct English caption per served name, in order."""
    things = ["red bicycle", "small wooden boat", "green apple", "old stone bridge", "yellow taxi",
              "white cat", "blue door", "snowy mountain"]
    pq.write_table(pa.table({
        "TEXT": [f"a photo of a {things[i % len(things)]} on a sunny day number {i}" for i in range(len(names))],
        "URL": [server.url(n) for n in names],
    }), path)
    return path
