"""Pre-shared-key authentication, compatible with the tokens Resoto's clients send.

A client proves it knows the pre-shared key (PSK) with a JWT in the header
``Authorization: Bearer <jwt>``. The JWT is signed with HS256; its key is
derived from the PSK by PBKDF2-HMAC-SHA256 (100,000 iterations, 32 bytes) over
a random 16-byte salt, which travels base64-encoded in the JWT header field
``salt``. The claim ``exp`` is checked when present; a token without it is
accepted, as Resoto's core accepts it (Resoto's clients always set it).

Deriving a key costs tens of milliseconds, so derived keys are cached by salt
(a client reuses its token, hence its salt, until it expires) and derivation
runs in a worker thread, one at a time, so that it never blocks the engine.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import jwt
import trio
from starlette.types import Message, Receive, Send

from ._errors import AuthError as AuthError

#: PBKDF2 parameters of Resoto's PSK tokens.
ITERATIONS = 100_000
KEY_LENGTH = 32
SALT_LENGTH = 16
ALGORITHM = "HS256"


def derive_key(psk: str, salt: bytes) -> bytes:
    """Return the HS256 key for ``psk`` and ``salt`` (PBKDF2-HMAC-SHA256)."""
    return hashlib.pbkdf2_hmac("sha256", psk.encode("utf-8"), salt, ITERATIONS, KEY_LENGTH)


def make_token(
    psk: str,
    *,
    expires_in: float = 300.0,
    claims: Mapping[str, Any] | None = None,
    salt: bytes | None = None,
) -> str:
    """Make a token the way Resoto's clients do.

    Args:
        psk: the pre-shared key.
        expires_in: seconds until the token expires (``exp``); may be negative
            to make an expired token.
        claims: more claims for the payload.
        salt: the salt (16 random bytes unless given).
    """
    salt = os.urandom(SALT_LENGTH) if salt is None else salt
    payload = {**(claims or {}), "exp": int(time.time() + expires_in)}
    headers = {"salt": base64.standard_b64encode(salt).decode("ascii")}
    return jwt.encode(payload, derive_key(psk, salt), algorithm=ALGORITHM, headers=headers)


def bearer_token(authorization: str | None) -> str:
    """Return the token of an ``Authorization: Bearer <token>`` header value.

    Raises:
        AuthError: no header, or not a bearer token.
    """
    if not authorization:
        raise AuthError("missing Authorization header (expected 'Bearer <jwt>')")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the Authorization header must be 'Bearer <jwt>'")
    return token.strip()


class TokenVerifier:
    """Check tokens against a pre-shared key.

    Args:
        psk: the pre-shared key.
        cache_size: how many derived keys (one per salt) are kept.
    """

    def __init__(self, psk: str, *, cache_size: int = 256) -> None:
        if not psk:
            raise ValueError("psk must be a non-empty string")
        self._psk = psk
        self._keys: OrderedDict[bytes, bytes] = OrderedDict()
        self._cache_size = cache_size
        self._limiter = trio.CapacityLimiter(1)

    async def verify(self, token: str) -> dict[str, Any]:
        """Return the token's claims.

        Raises:
            AuthError: the token is malformed, has no salt, has a bad signature,
                or has expired (``exp`` is optional).
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as error:
            raise AuthError(f"malformed token: {error}") from None
        salt_text = header.get("salt")
        if not isinstance(salt_text, str):
            raise AuthError("the token header has no 'salt'")
        try:
            salt = base64.b64decode(salt_text, validate=True)
        except (binascii.Error, ValueError):
            raise AuthError("the token's 'salt' is not base64") from None
        if not 1 <= len(salt) <= 64:
            raise AuthError("the token's 'salt' must be 1 to 64 bytes")
        key = await self._key(salt)
        try:
            claims: dict[str, Any] = jwt.decode(token, key, algorithms=[ALGORITHM])
        except jwt.ExpiredSignatureError:
            self._remember(salt, key)
            raise AuthError("the token has expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError("the token's signature does not match the pre-shared key") from None
        except jwt.InvalidTokenError as error:
            raise AuthError(f"invalid token: {error}") from None
        self._remember(salt, key)
        return claims

    async def _key(self, salt: bytes) -> bytes:
        key = self._keys.get(salt)
        if key is not None:
            self._keys.move_to_end(salt)
            return key
        return await trio.to_thread.run_sync(derive_key, self._psk, salt, limiter=self._limiter)

    def _remember(self, salt: bytes, key: bytes) -> None:
        """Cache a key whose signature checked out (so forged salts never evict good keys)."""
        self._keys[salt] = key
        self._keys.move_to_end(salt)
        while len(self._keys) > self._cache_size:
            self._keys.popitem(last=False)


#: WebSocket paths where, as in Resoto's core, a client without an Authorization
#: header may authorize with its first message instead:
#: ``{"kind": "authorization", "jwt": "Bearer <jwt>"}``.
DEFERRED_PATHS = frozenset({"/events", "/work/queue"})


_BEFORE_AUTHORIZATION = frozenset(
    {
        "websocket.accept",
        "websocket.close",
        "websocket.http.response.start",
        "websocket.http.response.body",
    }
)


class FirstMessageAuth:
    """ASGI ``receive``/``send`` wrappers that authorize a WebSocket by its first message.

    Until the first frame has been checked nothing is sent to the client and no
    frame reaches the application. A good token lets every later frame through;
    anything else closes the connection with 1008 and the application sees the
    client leave.
    """

    def __init__(self, verifier: TokenVerifier, receive: Receive, send: Send) -> None:
        self._verifier = verifier
        self._receive = receive
        self._send = send
        self.authorized = False
        self._denied = False

    async def receive(self) -> Message:
        """Return the next ASGI message for the application (the first frame is taken)."""
        while True:
            if self._denied:
                return {"type": "websocket.disconnect", "code": 1008}
            message = await self._receive()
            if self.authorized or message["type"] != "websocket.receive":
                return message
            try:
                await self._verifier.verify(bearer_token(_authorization(message)))
            except AuthError as error:
                self._denied = True
                reason = f"unauthorized: {error}".encode()[:120].decode("utf-8", "ignore")
                await self._send({"type": "websocket.close", "code": 1008, "reason": reason})
                continue
            self.authorized = True

    async def send(self, message: Message) -> None:
        """Pass a message to the client; until the client is authorized only the
        handshake's answer and a close go out, frames are dropped."""
        if not self.authorized and message["type"] not in _BEFORE_AUTHORIZATION:
            return
        await self._send(message)


def _authorization(message: Message) -> str | None:
    """Return the ``jwt`` of an authorization message, or None."""
    text = message.get("text")
    if text is None:
        try:
            text = bytes(message.get("bytes") or b"").decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict) and value.get("kind") == "authorization":
        jwt_value = value.get("jwt")
        return jwt_value if isinstance(jwt_value, str) else None
    return None
