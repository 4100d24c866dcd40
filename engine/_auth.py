"""Pre-shared-key authentication, compatible with the tokens Resoto's clients send.

A client proves it knows the pre-shared key (PSK) with a JWT in the header
``Authorization: Bearer <jwt>``. The JWT is signed with HS256; its key is
derived from the PSK by PBKDF2-HMAC-SHA256 (100,000 iterations, 32 bytes) over
a random 16-byte salt, which travels base64-encoded in the JWT header field
``salt``. The claim ``exp`` is required and checked.

Deriving a key costs tens of milliseconds, so derived keys are cached by salt
(a client reuses its token, hence its salt, until it expires) and derivation
runs in a worker thread, one at a time, so that it never blocks the engine.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import jwt
import trio

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
                has no ``exp`` or has expired.
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
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[ALGORITHM], options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            self._remember(salt, key)
            raise AuthError("the token has expired") from None
        except jwt.MissingRequiredClaimError:
            raise AuthError("the token has no 'exp' claim") from None
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
