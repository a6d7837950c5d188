"""``server.auth.TokenVerifier``: remembered tokens still expire, bad ones are never remembered."""

import time

import pytest

from server.auth import Role, TokenVerifier, mint_token
from server.errors import ApiError

SECRET = "a-test-secret-of-a-decent-length-0123456789"


def test_a_remembered_token_is_refused_once_it_expires():
    now = int(time.time())
    token = mint_token(SECRET, Role.DRIVER, "d-1", now=now, ttl_s=60)
    verifier = TokenVerifier(SECRET)
    assert verifier.verify(token, now).sub == "d-1"
    assert verifier.verify(token, now + 59).role is Role.DRIVER  # from memory
    with pytest.raises(ApiError) as refused:
        verifier.verify(token, now + 61)  # expired: checked again, and PyJWT refuses it by the real clock too
    assert refused.value.status == 401


def test_a_bad_token_is_refused_every_time_and_not_remembered():
    verifier = TokenVerifier(SECRET)
    forged = mint_token("another-secret-of-a-decent-length-0123456789", Role.ADMIN, "x", now=int(time.time()),
                        ttl_s=60)
    for _ in range(2):
        with pytest.raises(ApiError):
            verifier.verify(forged, time.time())
    assert verifier._verified == {}


def test_the_cache_is_bounded():
    verifier = TokenVerifier(SECRET, max_tokens=3)
    now = int(time.time())
    tokens = [mint_token(SECRET, Role.CUSTOMER, f"c-{i}", now=now, ttl_s=60) for i in range(5)]
    for token in tokens:
        verifier.verify(token, now)
    assert list(verifier._verified) == tokens[2:]
