"""JWT bearer tokens (HS256, PyJWT) proving who calls (the roles and principals of ``store.principal``)."""

from __future__ import annotations

import jwt

from server.errors import ApiError
from store.principal import Principal, Role

ALGORITHM = "HS256"
ISSUER = "hexdispatch"
MAX_SUBJECT_LEN = 128


def mint_token(secret: str, role: Role | str, sub: str, *, now: int, ttl_s: int) -> str:
    """A signed token for ``sub`` acting as ``role``, valid from ``now`` for ``ttl_s`` seconds."""
    role = Role(role)
    if not sub or len(sub) > MAX_SUBJECT_LEN:
        raise ValueError(f"subject must be 1 to {MAX_SUBJECT_LEN} characters")
    claims = {"sub": sub, "role": role.value, "iss": ISSUER, "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> Principal:
    """The principal a valid token names; ``ApiError(401)`` for anything else."""
    return _verified_claims(secret, token)[0]


class TokenVerifier:
    """:func:`verify_token` with the verified tokens remembered by their text.

    A client sends the same token with every request; checking its signature
    and claims each time is a good part of a cheap request's CPU. A remembered
    token is still refused from its expiry on (``now`` is passed in); the cache
    holds at most ``max_tokens`` and forgets the oldest first.
    """

    def __init__(self, secret: str, max_tokens: int = 100_000):
        self.secret = secret
        self.max_tokens = max_tokens
        self._verified: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str, now: float) -> Principal:
        remembered = self._verified.get(token)
        if remembered is not None and now < remembered[1]:
            return remembered[0]
        principal, expires_at = _verified_claims(self.secret, token)
        if now >= expires_at:
            raise _expired()
        if len(self._verified) >= self.max_tokens:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (principal, expires_at)
        return principal


def _verified_claims(secret: str, token: str) -> tuple[Principal, float]:
    """The principal a valid token names and when the token expires (unix s)."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "role", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise _expired() from None
    except jwt.PyJWTError as exc:
        raise ApiError(401, "invalid_token", f"the bearer token is not valid: {exc}") from None
    sub, role = claims.get("sub"), claims.get("role")
    if not isinstance(sub, str) or not 0 < len(sub) <= MAX_SUBJECT_LEN:
        raise ApiError(401, "invalid_token", "the token's subject is not valid")
    try:
        return Principal(sub=sub, role=Role(role)), float(claims["exp"])
    except ValueError:
        raise ApiError(401, "invalid_token", f"unknown role {role!r}") from None


def _expired() -> ApiError:
    return ApiError(401, "token_expired", "the bearer token has expired")


def bearer_token(authorization: str | None) -> str:
    """The token in an ``Authorization: Bearer ...`` header; ``ApiError(401)`` if absent."""
    if not authorization:
        raise ApiError(401, "unauthenticated", "an Authorization: Bearer token is required")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthenticated", "the Authorization header must be 'Bearer <token>'")
    return token.strip()


def require_role(principal: Principal, *roles: Role) -> Principal:
    """``principal`` if its role is one of ``roles``; ``ApiError(403)`` otherwise."""
    if principal.role not in roles:
        allowed = ", ".join(r.value for r in roles)
        raise ApiError(403, "forbidden", f"this needs one of the roles: {allowed}")
    return principal
