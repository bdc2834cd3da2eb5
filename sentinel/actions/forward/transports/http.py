"""HTTP(S) outputs: falcosidekick-style webhook, Splunk HEC, Elasticsearch/OpenSearch _bulk.

A batch is delivered only on a 2xx answer (and, for _bulk, per-item success or 409: the
record id is the document `_id`, created with `create`, so a resent record is recognised
as a duplicate). Bodies stay under max_body_bytes: batches are split, never records; a
record larger than max_record_bytes is truncated with a marker. A 400/413 for a batch is
bisected down to the one refused record, which is dropped and counted.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import time
from typing import Callable, Sequence
from urllib.parse import urlsplit

from sentinel.actions.forward import formats
from sentinel.actions.forward.records import parse_rfc3339_ns
from sentinel.actions.forward.settings import (
    ElasticsearchSettings,
    HTTPSettings,
    LokiSettings,
    Secret,
    SecretRef,
    SplunkHECSettings,
    WebhookSettings,
)
from sentinel.actions.forward.transports.base import Batch, DeliveryError, Transport
from sentinel.actions.forward.transports.tls import client_context
from sentinel.log import get_logger

log = get_logger(__name__)
PERMANENT_STATUSES = frozenset({400, 413, 422})


MAX_RETRY_AFTER = 300.0


class HTTPError(Exception):
    def __init__(self, status: int, body: bytes, retry_after: float = 0.0) -> None:
        super().__init__("HTTP %d: %s" % (status, body[:200].decode("utf-8", "replace")))
        self.status = status
        self.retry_after = retry_after
        self.body = body


class _HTTPConnection(http.client.HTTPConnection):
    """Plain HTTP with TCP_NODELAY: small requests are not held back by Nagle's algorithm."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS whose certificate is checked against tls_server_name rather than the URL host."""

    def __init__(self, host: str, port: int, *, server_name: str, context, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_name
        self._tls_context = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._tls_context.wrap_socket(self.sock, server_hostname=self._server_name)


class HTTPClient:
    """One keep-alive connection to one base URL; reconnects once on a stale connection."""

    def __init__(self, settings: HTTPSettings) -> None:
        self.settings = settings
        parts = urlsplit(settings.url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.base_path = parts.path.rstrip("/")
        self.last_retry_after = 0.0
        self.connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.https:
            return _HTTPSConnection(
                self.host,
                self.port,
                server_name=self.settings.tls_server_name or self.host,
                context=client_context(self.settings),
                timeout=self.settings.timeout,
            )
        return _HTTPConnection(self.host, self.port, timeout=self.settings.timeout)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """(status, body) of a POST; `last_retry_after` keeps the answer's Retry-After (s)."""
        all_headers = {"Content-Length": str(len(body)), "User-Agent": "sentinel-forward", **self.settings.headers, **headers}
        for attempt in (0, 1):
            if self.connection is None:
                self.connection = self._connect()
            try:
                self.connection.request("POST", self.base_path + path, body=body, headers=all_headers)
                response = self.connection.getresponse()
                data = response.read()
                self.last_retry_after = parse_retry_after(response.getheader("Retry-After"))
                if response.will_close:
                    self.close()
                return response.status, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt == 1:
                    raise DeliveryError("%s: %s" % (self.settings.url, exc)) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise DeliveryError("%s: %s" % (self.settings.url, exc)) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def parse_retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header given in seconds (dates are ignored), capped."""
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 0.0


def basic_auth(username: str, password: SecretRef, settings: HTTPSettings) -> Secret:
    """The Authorization header value for HTTP basic auth, kept redacted."""
    secret = password.resolve(settings.location) if password else Secret("", "none")
    token = base64.b64encode(("%s:%s" % (username, secret.reveal())).encode()).decode()
    return Secret("Basic " + token, secret.origin)


def chunks(items: Sequence[bytes], limit: int) -> list[list[int]]:
    """Indexes of `items` grouped so each group's total size stays <= limit (>= 1 item)."""
    groups: list[list[int]] = []
    size = limit + 1
    for index, item in enumerate(items):
        if size + len(item) > limit or not groups:
            groups.append([])
            size = 0
        groups[-1].append(index)
        size += len(item)
    return groups


class HTTPBatchTransport(Transport):
    """Common send loop: encode each record, group into bodies, POST, bisect refusals."""

    settings: HTTPSettings
    path = ""
    content_type = "application/json"

    def __init__(self, settings: HTTPSettings) -> None:
        super().__init__(settings)
        self.client = HTTPClient(settings)

    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type}

    def encode(self, record: dict) -> bytes:
        """One record's part of a body (already within max_record_bytes)."""
        raise NotImplementedError

    def body(self, parts: list[bytes], records: list[dict]) -> bytes:
        return b"".join(parts)

    def check(self, status: int, data: bytes, count: int) -> None:
        """Raise HTTPError unless the receiver accepted all `count` records."""
        if not 200 <= status < 300:
            raise HTTPError(status, data)

    def fitted(self, record: dict, render: Callable[[dict], bytes]) -> bytes | None:
        try:
            return formats.fit(record, render, self.settings.max_record_bytes)
        except ValueError as exc:
            self.dropped += 1
            log.warning("forward.dropped", output=self.settings.name, reason=str(exc))
            return None

    def send(self, batch: Batch) -> None:
        encoded = [(record, self.fitted(record, self.encode)) for _seq, record in batch]
        positions = [i for i, (_r, part) in enumerate(encoded) if part is not None]
        delivered_positions = set(i for i, (_r, part) in enumerate(encoded) if part is None)
        parts = [encoded[i][1] for i in positions]
        delivered = 0

        def progress() -> int:
            count = 0
            while count < len(encoded) and count in delivered_positions:
                count += 1
            return count

        for group in chunks(parts, self.settings.max_body_bytes):
            indexes = [positions[g] for g in group]
            try:
                self._post_group(indexes, encoded)
            except DeliveryError as exc:
                raise DeliveryError(str(exc), delivered=max(delivered, progress()), retry_after=exc.retry_after) from None
            delivered_positions.update(indexes)
            delivered = progress()

    def _post_group(self, indexes: list[int], encoded: list) -> None:
        records = [encoded[i][0] for i in indexes]
        parts = [encoded[i][1] for i in indexes]
        body, headers = self.body(parts, records), self.headers()
        if self.settings.gzip:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        status, data = self.client.post(self.path, body, headers)
        try:
            if not 200 <= status < 300:
                raise HTTPError(status, data, self.client.last_retry_after)
            self.check(status, data, len(indexes))
        except HTTPError as exc:
            if exc.status in PERMANENT_STATUSES:
                if len(indexes) == 1:
                    self.dropped += 1
                    log.warning("forward.refused", output=self.settings.name, status=exc.status, **{"record.id": records[0].get("id")})
                    return
                middle = len(indexes) // 2
                self._post_group(indexes[:middle], encoded)
                self._post_group(indexes[middle:], encoded)
                return
            raise DeliveryError("%s: %s" % (self.settings.url, exc), retry_after=exc.retry_after) from None

    def close(self) -> None:
        self.client.close()


class WebhookTransport(HTTPBatchTransport):
    """POST of each record as Falco JSON (falcosidekick's input), one record per request."""

    settings: WebhookSettings

    def __init__(self, settings: WebhookSettings) -> None:
        super().__init__(settings)
        self._auth: Secret | None = None
        if settings.bearer_token:
            token = settings.bearer_token.resolve(settings.location)
            self._auth = Secret("Bearer " + token.reveal(), token.origin)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._auth:
            headers["Authorization"] = self._auth.reveal()
        return headers

    def encode(self, record: dict) -> bytes:
        return formats.to_json(record).encode("utf-8")

    def send(self, batch: Batch) -> None:
        for index, entry in enumerate(batch):
            try:
                super().send([entry])
            except DeliveryError as exc:
                raise DeliveryError(str(exc), delivered=index, retry_after=exc.retry_after) from None


class SplunkHECTransport(HTTPBatchTransport):
    """HEC /services/collector/event: concatenated event objects, `Authorization: Splunk`."""

    settings: SplunkHECSettings
    path = "/services/collector/event"

    def __init__(self, settings: SplunkHECSettings) -> None:
        super().__init__(settings)
        self._token = settings.token.resolve(settings.location)

    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Authorization": "Splunk " + self._token.reveal()}

    def encode(self, record: dict) -> bytes:
        try:
            epoch = parse_rfc3339_ns(record.get("time", "")) / 1e9
        except ValueError:
            epoch = time.time()
        envelope = {
            "time": round(epoch, 6),
            "host": record.get("hostname", ""),
            "source": self.settings.source,
            "sourcetype": self.settings.sourcetype,
            "fields": {"sentinel_id": record.get("id", "")},
            "event": record,
        }
        if self.settings.index:
            envelope["index"] = self.settings.index
        return formats.to_json(envelope).encode("utf-8")


class ElasticsearchTransport(HTTPBatchTransport):
    """_bulk with `create` and `_id` = record id: a resent record answers 409, a duplicate."""

    settings: ElasticsearchSettings
    path = "/_bulk"
    content_type = "application/x-ndjson"

    def __init__(self, settings: ElasticsearchSettings) -> None:
        super().__init__(settings)
        self._auth: Secret | None = None
        if settings.api_key:
            key = settings.api_key.resolve(settings.location)
            self._auth = Secret("ApiKey " + key.reveal(), key.origin)
        elif settings.username:
            self._auth = basic_auth(settings.username, settings.password, settings)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.content_type}
        if self._auth:
            headers["Authorization"] = self._auth.reveal()
        return headers

    def index_for(self, record: dict) -> str:
        if "%" not in self.settings.index:
            return self.settings.index
        try:
            stamp = parse_rfc3339_ns(record.get("time", "")) // 1_000_000_000
        except ValueError:
            stamp = int(time.time())
        return time.strftime(self.settings.index, time.gmtime(stamp))

    def encode(self, record: dict) -> bytes:
        action = {"create": {"_index": self.index_for(record), "_id": record.get("id", "")}}
        return (formats.to_json(action) + "\n" + formats.to_json(formats.ecs(record)) + "\n").encode("utf-8")

    def check(self, status: int, data: bytes, count: int) -> None:
        super().check(status, data, count)
        try:
            answer = json.loads(data)
        except ValueError:
            raise HTTPError(502, b"_bulk answer is not JSON") from None
        if not answer.get("errors"):
            return
        retry = [
            item for item in answer.get("items", [])
            if next(iter(item.values()), {}).get("status", 500) in (429,) or next(iter(item.values()), {}).get("status", 500) >= 500
        ]
        refused = [
            item for item in answer.get("items", [])
            if 400 <= next(iter(item.values()), {}).get("status", 500) < 500 and next(iter(item.values()), {}).get("status") not in (409, 429)
        ]
        if retry:
            raise HTTPError(503, b"_bulk: %d items to retry" % len(retry))
        if refused:
            self.dropped += len(refused)
            log.warning("forward.refused", output=self.settings.name, count=len(refused), reason=str(refused[0])[:300])


class LokiTransport(HTTPBatchTransport):
    """Loki push API: streams labelled host/rule/priority/kind, one JSON line per record."""

    settings: LokiSettings
    path = "/loki/api/v1/push"

    def __init__(self, settings: LokiSettings) -> None:
        super().__init__(settings)
        self._auth = basic_auth(settings.username, settings.password, settings) if settings.username else None

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._auth:
            headers["Authorization"] = self._auth.reveal()
        if self.settings.tenant:
            headers["X-Scope-OrgID"] = self.settings.tenant
        return headers

    def labels(self, record: dict) -> dict[str, str]:
        labels = dict(self.settings.labels)
        labels.update(
            host=str(record.get("hostname", "")),
            kind=str(record.get("kind", "alert")),
            source="sentinel",
        )
        if record.get("kind", "alert") == "alert":
            labels.update(rule=str(record.get("rule", "")), priority=str(record.get("priority", "")).lower())
        return labels

    def encode(self, record: dict) -> bytes:
        # The part is the line as a JSON string (escaped once, so sizes add up); `body`
        # groups the parts into streams.
        return formats.to_json(formats.to_json(record)).encode("utf-8")

    def body(self, parts: list[bytes], records: list[dict]) -> bytes:
        streams: dict[tuple, list[bytes]] = {}
        for part, record in zip(parts, records):
            key = tuple(sorted(self.labels(record).items()))
            try:
                stamp = parse_rfc3339_ns(record.get("time", ""))
            except ValueError:
                stamp = time.time_ns()
            streams.setdefault(key, []).append(b'["%d",%s]' % (stamp, part))
        return b'{"streams":[%s]}' % b",".join(
            b'{"stream":%s,"values":[%s]}' % (formats.to_json(dict(key)).encode("utf-8"), b",".join(values))
            for key, values in streams.items()
        )
