"""An SMTP server for the notification tests, built on Debian's python3-aiosmtpd.

Usage: smtp_receiver.py starttls|implicit PORT CERT KEY USER PASSWORD

It listens on 127.0.0.1:PORT, requires AUTH with USER and PASSWORD, and TLS: STARTTLS before
anything else ("starttls"), or TLS from the first byte ("implicit"). Each message it accepts is
printed on stdout as one JSON line: envelope, content, the authenticated login and whether the
session was encrypted.
"""

import json
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

mode, port, cert, key, user, password = sys.argv[1:7]


class Handler:
    async def handle_DATA(self, server, session, envelope):
        encrypted = session.ssl is not None or (
            server.transport is not None
            and server.transport.get_extra_info("ssl_object") is not None
        )
        print(
            json.dumps(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": envelope.rcpt_tos,
                    "content": envelope.content.decode("utf-8", "replace"),
                    "login": session.auth_data,
                    "tls": encrypted,
                }
            ),
            flush=True,
        )
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    if not isinstance(auth_data, LoginPassword):
        return AuthResult(success=False, handled=False)
    login = auth_data.login.decode()
    good = login == user and auth_data.password.decode() == password
    return AuthResult(success=good, handled=False, auth_data=login if good else None)


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
common = dict(
    hostname="127.0.0.1",
    port=int(port),
    authenticator=authenticator,
    auth_required=True,
)
if mode == "starttls":
    controller = Controller(
        Handler(), tls_context=context, require_starttls=True, auth_require_tls=True, **common
    )
else:
    # With implicit TLS aiosmtpd does not count the session as STARTTLS-encrypted, so its
    # "AUTH needs TLS" check must be off; the whole session is encrypted anyway.
    controller = Controller(Handler(), ssl_context=context, auth_require_tls=False, **common)
controller.start()
print("ready", flush=True)
threading.Event().wait()
