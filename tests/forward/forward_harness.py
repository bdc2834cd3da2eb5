"""Test harness for forwarding: sample and hostile records, reference parsers for CEF and
RFC 5424 structured data, and real receivers on loopback (rsyslog, an HTTP SIEM, a Loki API).

Every receiver is started by a fixture and stopped by PID (or server shutdown) in teardown.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from sentinel.actions.alert import HostIdentity, alert_record


IDENTITY = HostIdentity(hostname="test-host", machine_id="m" * 32, boot_id="b-o-o-t")


def make_alert(number: int = 0, **changes) -> dict:
    fields = {"proc.name": "bash", "proc.pid": 1000 + number, "fd.name": "/etc/shadow", "user.name": "root"}
    fields.update(changes.pop("output_fields", {}))
    values = dict(rule="Read sensitive file", priority="warning", output="alert number %d" % number,
                  output_fields=fields, tags=("filesystem", "mitre_credential_access"))
    values.update(changes)
    return alert_record(host=IDENTITY, ruleset_version="r1", time_ns=time.time_ns(), **values)


HOSTILE = "line1\nline2\r\x1b[31mred\x1b[0m | pipe = eq \\ back ] bracket \" quote \x9b csi \x7f del"
INJECT_JSON = '","rule":"fake","x":"'
INJECT_LINE = "\n<13>1 2026-01-01T00:00:00Z evil app - - - forged record"


# ------------------------------------------------------------------ a CEF reader (spec)
def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """Split a CEF line as a SIEM does: 7 header fields on unescaped `|`, then key=value."""
    header, index, current = [], 0, ""
    assert line.startswith("CEF:")
    while len(header) < 7:
        char = line[index]
        if char == "\\" and line[index + 1] in "\\|":
            current += line[index + 1]
            index += 2
            continue
        if char == "|":
            header.append(current)
            current = ""
        else:
            current += char
        index += 1
    extension = line[index:]
    # keys are [A-Za-z0-9]+ followed by an unescaped '='; a value runs to the next key.
    tokens = list(re.finditer(r"(?:^| )([A-Za-z0-9]+)=", extension))
    fields = {}
    for position, token in enumerate(tokens):
        start = token.end()
        end = tokens[position + 1].start() if position + 1 < len(tokens) else len(extension)
        raw = extension[start:end]
        assert not re.search(r"(?<!\\)(?:\\\\)*=", raw.replace("\\\\", "")), "unescaped = in %r" % raw
        value = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), raw)
        fields[token.group(1)] = value
    return header, fields


def parse_sd_params(sd: str) -> dict[str, str]:
    """SD-PARAMs of one SD-ELEMENT, unescaping \\" \\\\ \\] (RFC 5424 6.3.3)."""
    match = re.fullmatch(r'\[sentinel@32473((?: \w+="(?:[^"\\\]]|\\["\\\]])*")*)\]', sd)
    assert match, "malformed SD %r" % sd
    return {k: re.sub(r'\\(["\\\]])', r"\1", v) for k, v in re.findall(r'(\w+)="((?:[^"\\\]]|\\["\\\]])*)"', match.group(1))}


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("nothing listens on 127.0.0.1:%d" % port)


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


# ------------------------------------------------------------------ test CA
def make_test_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server cert for `localhost`/127.0.0.1 and a client cert, with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name for name in ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=sentinel test CA")
    for name, san in (("server", "DNS:localhost,IP:127.0.0.1"), ("client", "DNS:client.test")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key", "-out", name + ".csr",
            "-subj", "/CN=%s" % ("localhost" if name == "server" else "client.test"))
        (directory / (name + ".ext")).write_text("subjectAltName=%s\n" % san)
        run("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext")
    return paths


# ------------------------------------------------------------------ rsyslog
RSYSLOG_CONF = """
global(workDirectory="{dir}" maxMessageSize="{max_size}"
       defaultNetstreamDriverCAFile="{ca}" defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" maxSessions="50")
module(load="imrelp")
template(name="fields" type="string"
         string="%inputname%\\t%msgid%\\t%structured-data:::json%\\t%hostname%\\t%app-name%\\t%msg:::json%\\n")
ruleset(name="out") {{
    action(type="omfile" file="{out}" template="fields" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imtcp" port="{tcp}" ruleset="out" name="tcp")
input(type="imtcp" port="{tls}" ruleset="out" name="tls" streamDriver.name="gtls" streamDriver.mode="1"
      streamDriver.authMode="x509/certvalid")
input(type="imrelp" port="{relp}" ruleset="out" name="relp" maxDataSize="{max_size}")
input(type="imrelp" port="{relp_tls}" ruleset="out" name="relp-tls" maxDataSize="{max_size}" tls="on"
      tls.caCert="{ca}" tls.myCert="{cert}" tls.myPrivKey="{key}" tls.authMode="certvalid")
"""


class Rsyslog:
    """An rsyslogd of our own (imtcp plain + TLS, imrelp plain + TLS) writing parsed fields to a file."""

    def __init__(self, directory: Path, pki: dict[str, Path], max_size: int = 65536) -> None:
        self.directory = directory
        self.out = directory / "received.log"
        self.pidfile = directory / "rsyslogd.pid"
        self.ports = {"tcp": free_port(), "tls": free_port(), "relp": free_port(), "relp-tls": free_port()}
        self.conf = directory / "rsyslog.conf"
        self.conf.write_text(
            RSYSLOG_CONF.format(
                dir=directory, max_size=max_size, ca=pki["ca.pem"], cert=pki["server.pem"], key=pki["server.key"],
                out=self.out, tcp=self.ports["tcp"], tls=self.ports["tls"], relp=self.ports["relp"],
                relp_tls=self.ports["relp-tls"],
            )
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("rsyslogd") or "/usr/sbin/rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
            stdout=subprocess.DEVNULL, stderr=open(self.directory / "rsyslogd.err", "ab"),
        )
        for port in self.ports.values():
            wait_port(port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def lines(self) -> list[dict]:
        """Received messages as dicts: input, msgid, sd, hostname, app, msg."""
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) != 6:
                out.append({"malformed": line})
                continue
            unescape = lambda text: json.loads('"%s"' % text)  # noqa: E731
            out.append(
                {"input": parts[0], "msgid": parts[1], "sd": unescape(parts[2]), "hostname": parts[3], "app": parts[4],
                 "msg": unescape(parts[5])}
            )
        return out


# ------------------------------------------------------------------ HTTP receivers
class HTTPReceiver:
    """A threaded HTTP server that records requests and answers like a webhook, HEC or _bulk.

    `status` (an int, or a callable(request) -> int) sets the answer; `delay` slows it down;
    `stop()`/`start()` take it off the port and bring it back on the same port.
    """

    def __init__(self, mode: str = "webhook", tls: tuple[Path, Path] | None = None) -> None:
        self.mode = mode
        self.tls = tls  # (certificate, key): serve HTTPS
        self.port = free_port()
        self.requests: list[dict] = []
        self.attempts: list[float] = []  # monotonic time of every POST, refused ones too
        self.bulk_ids: set[str] = set()
        self.loki_entries: list[tuple[dict, str, str]] = []
        self.status: int | object = 200
        self.delay = 0.0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body are two writes: without this, Nagle + delayed ACK add 40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                receiver._answer(self, receiver._get(self))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = {"path": self.path, "headers": dict(self.headers.items()), "body": body}
                if receiver.delay:
                    time.sleep(receiver.delay)
                receiver._answer(self, receiver._post(request))

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)
            self.server = None

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, answer: tuple[int, bytes]) -> None:
        status, body = answer
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        if status == 429:
            handler.send_header("Retry-After", "1")
        handler.end_headers()
        handler.wfile.write(body)

    def _post(self, request: dict) -> tuple[int, bytes]:
        self.attempts.append(time.monotonic())
        status = self.status(request) if callable(self.status) else self.status
        if not 200 <= status < 300:
            return status, b'{"error":"refused by test"}'
        with self.lock:
            self.requests.append(request)
            if self.mode == "bulk":
                return 200, self._bulk(request["body"])
            if self.mode == "loki":
                for stream in json.loads(request["body"])["streams"]:
                    for stamp, line in stream["values"]:
                        self.loki_entries.append((stream["stream"], stamp, line))
                return 204, b""
        if self.mode == "hec":
            return 200, b'{"text":"Success","code":0}'
        return status, b"{}"

    def _bulk(self, body: bytes) -> bytes:
        lines = body.decode("utf-8").split("\n")
        assert lines[-1] == "", "an NDJSON body ends with a newline"
        items = []
        for action_line in lines[:-1:2]:
            action = json.loads(action_line)["create"]
            status = 409 if action["_id"] in self.bulk_ids else 201
            self.bulk_ids.add(action["_id"])
            items.append({"create": {"_index": action["_index"], "_id": action["_id"], "status": status}})
        return json.dumps({"took": 1, "errors": any(i["create"]["status"] != 201 for i in items), "items": items}).encode()

    def _get(self, handler: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        """The Loki read API subset the tests use: query_range with a label selector."""
        parts = urlsplit(handler.path)
        if parts.path != "/loki/api/v1/query_range":
            return 404, b"{}"
        query = parse_qs(parts.query)["query"][0]
        wanted = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', query))
        streams: dict[tuple, list] = {}
        with self.lock:
            for labels, stamp, line in self.loki_entries:
                if all(labels.get(k) == v for k, v in wanted.items()):
                    streams.setdefault(tuple(sorted(labels.items())), []).append([stamp, line])
        result = [{"stream": dict(key), "values": values} for key, values in streams.items()]
        return 200, json.dumps({"status": "success", "data": {"resultType": "streams", "result": result}}).encode()

    # helpers for assertions
    def bodies(self) -> list[bytes]:
        with self.lock:
            return [r["body"] for r in self.requests]


def split_concatenated_json(body: bytes) -> list[dict]:
    """HEC bodies are JSON objects one after another."""
    decoder = json.JSONDecoder()
    text = body.decode("utf-8")
    index, out = 0, []
    while index < len(text):
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            break
        value, index = decoder.raw_decode(text, index)
        out.append(value)
    return out
