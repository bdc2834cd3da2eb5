"""Client TLS contexts from an output's tls_* options (shared by syslog, RELP and HTTPS)."""

from __future__ import annotations

import ssl

from sentinel.actions.forward.settings import TLSSettings
from sentinel.errors import ConfigError


def client_context(settings: TLSSettings) -> ssl.SSLContext:
    """Verifies the server against tls_ca_file alone (or, without one, the system store) and
    its name; TLS 1.2 at least."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname check + CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if settings.tls_ca_file:
            context.load_verify_locations(cafile=settings.tls_ca_file)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if settings.tls_cert_file:
            password = settings.tls_key_password.resolve().reveal() if settings.tls_key_password else None
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file, password=password)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("TLS setup failed: %s" % exc, getattr(settings, "location", None)) from None
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
