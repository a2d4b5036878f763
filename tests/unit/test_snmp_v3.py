"""The v3 fast path (baton.adapters.snmp_v3) against pysnmp's own USM pieces, RFC vectors, and fuzzing.

pysnmp plays the agent: its key localization, HMAC and AES modules and its pyasn1 message
definitions build the answers we must read, and check the requests we send.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1.codec.ber import encoder as ber_encoder
from pyasn1.type import univ
from pysnmp.proto import api as snmp_api
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.proto.mpmod.rfc3412 import ScopedPDU, SNMPv3Message
from pysnmp.proto.secmod.eso.priv import aes192, aes256
from pysnmp.proto.secmod.rfc3414.auth import hmacmd5, hmacsha
from pysnmp.proto.secmod.rfc3414.service import UsmSecurityParameters
from pysnmp.proto.secmod.rfc3826.priv import aes
from pysnmp.proto.secmod.rfc7860.auth import hmacsha2

from baton.adapters.snmp import convert
from baton.adapters.snmp_fast import BerError, encode_oid
from baton.adapters.snmp_v3 import (
    AUTH_PROTOCOLS,
    PRIV_KEY_SIZES,
    Answer,
    Discarded,
    Engine,
    Failed,
    KeyCache,
    PduTemplate,
    Report,
    UsmUser,
    V3Target,
    extend_key,
    localize_key,
    password_to_key,
    read_message,
)

V2C = snmp_api.PROTOCOL_MODULES[snmp_api.SNMP_VERSION_2C]
UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
IF1 = (1, 3, 6, 1, 2, 1, 2, 2, 1, 8, 1)
SYSNAME = (1, 3, 6, 1, 2, 1, 1, 5, 0)
AUTH_PASS = "authpass123"
PRIV_PASS = "privpass123"
ENGINE_ID = bytes.fromhex("80001f8880e9630000d61ff449")

_PYSNMP_AUTH: dict[str, Any] = {
    "MD5": hmacmd5.HmacMd5(),
    "SHA": hmacsha.HmacSha(),
    "SHA224": hmacsha2.HmacSha2(hmacsha2.HmacSha2.SHA224_SERVICE_ID),
    "SHA256": hmacsha2.HmacSha2(hmacsha2.HmacSha2.SHA256_SERVICE_ID),
    "SHA384": hmacsha2.HmacSha2(hmacsha2.HmacSha2.SAH384_SERVICE_ID),
    "SHA512": hmacsha2.HmacSha2(hmacsha2.HmacSha2.SHA512_SERVICE_ID),
}
_SERVICE_IDS: dict[str, tuple[int, ...]] = {
    "MD5": hmacmd5.HmacMd5.SERVICE_ID,
    "SHA": hmacsha.HmacSha.SERVICE_ID,
    "SHA224": hmacsha2.HmacSha2.SHA224_SERVICE_ID,
    "SHA256": hmacsha2.HmacSha2.SHA256_SERVICE_ID,
    "SHA384": hmacsha2.HmacSha2.SAH384_SERVICE_ID,
    "SHA512": hmacsha2.HmacSha2.SHA512_SERVICE_ID,
}
_PYSNMP_PRIV: dict[str, Any] = {
    "AES": aes.Aes(),
    "AES192": aes192.AesBlumenthal192(),
    "AES256": aes256.AesBlumenthal256(),
}
CACHE = KeyCache()


@functools.cache
def _pysnmp_masters(auth: str, priv: str | None) -> tuple[Any, Any]:
    """pysnmp's master keys (its own 1 MiB pass-phrase hashing), computed once per pair."""
    auth_master = _PYSNMP_AUTH[auth].hash_passphrase(AUTH_PASS)
    if priv is None:
        return auth_master, None
    return auth_master, _PYSNMP_PRIV[priv].hash_passphrase(_SERVICE_IDS[auth], PRIV_PASS)


def pysnmp_keys(auth: str, priv: str | None, engine_id: bytes) -> tuple[bytes, bytes | None]:
    """Localized (auth, priv) keys the way pysnmp's USM computes them."""
    auth_master, priv_master = _pysnmp_masters(auth, priv)
    engine = univ.OctetString(engine_id)
    auth_key = bytes(_PYSNMP_AUTH[auth].localize_key(auth_master, engine))
    if priv is None:
        return auth_key, None
    return auth_key, bytes(_PYSNMP_PRIV[priv].localize_key(_SERVICE_IDS[auth], priv_master, engine))


def user_for(auth: str, priv: str | None, name: str = "baton") -> UsmUser:
    return UsmUser.from_passwords(name, auth, AUTH_PASS, priv, PRIV_PASS if priv else None, CACHE)


def target_for(
    auth: str, priv: str | None, oids: Any = (UPTIME, IF1, SYSNAME), name: str = "baton"
) -> V3Target:
    target = V3Target(("127.0.0.1", 161), socket.AF_INET, user_for(auth, priv, name), PduTemplate(oids))
    target.engine = Engine(ENGINE_ID, 7, 1000, 1000, 0.0, verified=True, keys=target.user.keys(ENGINE_ID))
    return target


# --- keys -----------------------------------------------------------------------------------


def test_rfc3414_a3_key_localization_vectors() -> None:
    """RFC 3414 A.3.1 / A.3.2: "maplesyrup" localized to engine 00..02 with MD5 and SHA-1."""
    engine_id = bytes(11) + b"\x02"
    md5 = localize_key("md5", password_to_key("md5", b"maplesyrup"), engine_id)
    sha = localize_key("sha1", password_to_key("sha1", b"maplesyrup"), engine_id)
    assert "526f5eed9fcce26f8964c2930787d82b" == md5.hex()
    assert "6695febc9288e36282235fc7151f128497b38f3f" == sha.hex()


@pytest.mark.parametrize("auth", sorted(AUTH_PROTOCOLS))
@pytest.mark.parametrize("priv", [None, *sorted(PRIV_KEY_SIZES)])
def test_localized_keys_match_pysnmp(auth: str, priv: str | None) -> None:
    """Auth and (Blumenthal-extended) privacy keys equal pysnmp's for every protocol pair."""
    expected_auth, expected_priv = pysnmp_keys(auth, priv, ENGINE_ID)
    hash_name = AUTH_PROTOCOLS[auth].hash_name
    ours_auth = localize_key(hash_name, password_to_key(hash_name, AUTH_PASS.encode()), ENGINE_ID)
    assert expected_auth == ours_auth
    if priv is not None:
        localized = localize_key(hash_name, password_to_key(hash_name, PRIV_PASS.encode()), ENGINE_ID)
        assert expected_priv == extend_key(hash_name, localized, PRIV_KEY_SIZES[priv])


def test_key_cache_hashes_each_pass_phrase_once_and_shows_no_secret() -> None:
    """Two users with the same phrases share master keys; no repr shows a phrase or a key."""
    cache = KeyCache()
    users = [UsmUser.from_passwords("u", "SHA", AUTH_PASS, "AES", PRIV_PASS, cache) for _ in range(3)]
    keys = users[0].keys(ENGINE_ID)
    shown = repr(cache) + repr(users) + repr(keys)
    assert 2 == len(cache)
    assert AUTH_PASS not in shown
    assert PRIV_PASS not in shown
    assert "UsmUser('u', auth=SHA, priv=AES128)" == repr(users[0])


# --- pysnmp as the agent ---------------------------------------------------------------------


def pysnmp_answer(
    auth: str,
    priv: str | None,
    *,
    msg_id: int,
    request_id: int,
    boots: int,
    engine_time: int,
    varbinds: list[tuple[Any, Any]],
    user: bytes = b"baton",
    engine_id: bytes = ENGINE_ID,
    pdu_cls: Any = None,
    error: tuple[int, int] = (0, 0),
) -> bytes | None:
    """An agent's answer built with pysnmp's pyasn1 types, auth and priv modules (None if the
    digest placeholder is ambiguous, which pysnmp's byte search cannot handle)."""
    pdu = (pdu_cls or V2C.GetResponsePDU)()
    V2C.apiPDU.set_defaults(pdu)
    V2C.apiPDU.set_request_id(pdu, request_id)
    V2C.apiPDU.set_error_status(pdu, error[0])
    V2C.apiPDU.set_error_index(pdu, error[1])
    V2C.apiPDU.set_varbinds(pdu, varbinds)
    scoped = ScopedPDU()
    scoped.setComponentByPosition(0, engine_id)
    scoped.setComponentByPosition(1, b"")
    scoped.setComponentByPosition(2)
    scoped.getComponentByPosition(2).setComponentByType(pdu.tagSet, pdu)
    plaintext = bytes(ber_encoder.encode(scoped))
    auth_key, priv_key = pysnmp_keys(auth, priv, engine_id)
    auth_module = _PYSNMP_AUTH[auth]
    digest_len = auth_module.digest_length
    usm = UsmSecurityParameters()
    usm.setComponentByPosition(0, engine_id)
    usm.setComponentByPosition(1, boots)
    usm.setComponentByPosition(2, engine_time)
    usm.setComponentByPosition(3, user)
    usm.setComponentByPosition(4, bytes(digest_len))
    message = SNMPv3Message()
    message.setComponentByPosition(0, 3)
    header = message.setComponentByPosition(1).getComponentByPosition(1)
    header.setComponentByPosition(0, msg_id)
    header.setComponentByPosition(1, 65507)
    header.setComponentByPosition(2, bytes((3 if priv else 1,)))
    header.setComponentByPosition(3, 3)
    data = message.setComponentByPosition(3).getComponentByPosition(3)
    if priv is not None:
        ciphertext, salt = _PYSNMP_PRIV[priv].encrypt_data(
            univ.OctetString(priv_key), (boots, engine_time, None), plaintext
        )
        usm.setComponentByPosition(5, salt)
        data.setComponentByPosition(1, ciphertext)
    else:
        usm.setComponentByPosition(5, b"")
        data.setComponentByPosition(0, scoped)
    message.setComponentByPosition(2, bytes(ber_encoder.encode(usm)))
    whole = bytes(ber_encoder.encode(message))
    if whole.count(bytes(digest_len)) != 1:
        return None
    return bytes(auth_module.authenticate_outgoing_message(univ.OctetString(auth_key), whole))


auth_names = st.sampled_from(sorted(AUTH_PROTOCOLS))
priv_names = st.sampled_from([None, *sorted(PRIV_KEY_SIZES)])
oids = st.tuples(st.integers(0, 2), st.integers(0, 39)).flatmap(
    lambda head: st.lists(st.integers(0, 2**32 - 1), max_size=10).map(lambda tail: (*head, *tail))
)
values = st.one_of(
    st.integers(-(2**31), 2**31 - 1).map(rfc1902.Integer),
    st.binary(max_size=200).map(rfc1902.OctetString),
    st.integers(0, 2**32 - 1).map(rfc1902.TimeTicks),
    st.integers(0, 2**32 - 1).map(rfc1902.Counter32),
    st.integers(0, 2**64 - 1).map(rfc1902.Counter64),
    st.binary(min_size=4, max_size=4).map(rfc1902.IpAddress),
    oids.map(rfc1902.ObjectName),
    st.sampled_from([rfc1905.noSuchObject, rfc1905.noSuchInstance, rfc1905.endOfMibView]),
)


@given(
    auth=auth_names,
    priv=priv_names,
    msg_id=st.integers(0, 2**31 - 1),
    request_id=st.integers(-(2**31), 2**31 - 1),
    boots=st.integers(7, 2**31 - 2),
    engine_time=st.integers(1000, 2**31 - 1),
    varbinds=st.lists(st.tuples(oids, values), max_size=12),
    error=st.tuples(st.integers(0, 18), st.integers(0, 12)),
)
@settings(max_examples=150, deadline=None)
def test_any_pysnmp_encoded_answer_reads_as_pysnmp_reads_it(
    auth: str,
    priv: str | None,
    msg_id: int,
    request_id: int,
    boots: int,
    engine_time: int,
    varbinds: list[tuple[Any, Any]],
    error: tuple[int, int],
) -> None:
    """Differential: random authenticated (and encrypted) answers made by pysnmp are read, checked
    and decrypted into exactly the values pysnmp's codec gives."""
    raw = pysnmp_answer(
        auth,
        priv,
        msg_id=msg_id,
        request_id=request_id,
        boots=boots,
        engine_time=engine_time,
        varbinds=varbinds,
        error=error,
    )
    assume(raw is not None)
    assert raw is not None
    target = target_for(auth, priv)
    message = read_message(raw)
    outcome = target.judge(raw, message, request_id, now=0.0)
    assert isinstance(outcome, Answer), outcome
    assert (msg_id, boots, engine_time) == (message.msg_id, message.boots, message.time)
    assert (request_id, *error) == (
        outcome.response.request_id,
        outcome.response.error_status,
        outcome.response.error_index,
    )
    assert [(encode_oid(oid), convert(value)) for oid, value in varbinds] == list(outcome.response.varbinds)


def pysnmp_read_request(auth: str, priv: str | None, raw: bytes) -> tuple[Any, Any, Any]:
    """Decode, authenticate and decrypt one of our requests with pysnmp: (message, usm, pdu)."""
    message, rest = ber_decoder.decode(raw, asn1Spec=SNMPv3Message())
    assert b"" == rest
    usm, rest = ber_decoder.decode(bytes(message[2]), asn1Spec=UsmSecurityParameters())
    assert b"" == rest
    auth_key, priv_key = pysnmp_keys(auth, priv, bytes(usm[0]))
    auth_module = _PYSNMP_AUTH[auth]
    auth_module.authenticate_incoming_message(
        univ.OctetString(auth_key), usm[4], raw
    )  # raises if the digest is wrong
    data = message[3]
    if priv is not None:
        plaintext = _PYSNMP_PRIV[priv].decrypt_data(
            univ.OctetString(priv_key), (usm[1], usm[2], usm[5]), data[1]
        )
        scoped, rest = ber_decoder.decode(plaintext, asn1Spec=ScopedPDU())
        assert b"" == rest
    else:
        scoped = data[0]
    return message, usm, scoped[2].getComponent()


@given(
    auth=auth_names,
    priv=priv_names,
    msg_id=st.integers(2**24, 2**31 - 1),
    request_id=st.integers(2**24, 2**31 - 1),
    names=st.lists(oids, min_size=1, max_size=8),
    boots=st.integers(0, 2**31 - 2),
    engine_time=st.integers(0, 2**31 - 10**6),
    salt=st.integers(0, 2**64 - 1),
    user=st.text(min_size=1, max_size=32).filter(lambda u: len(u.encode()) <= 32),
)
@settings(max_examples=150, deadline=None)
def test_our_requests_authenticate_and_decrypt_in_pysnmp(
    auth: str,
    priv: str | None,
    msg_id: int,
    request_id: int,
    names: list[Any],
    boots: int,
    engine_time: int,
    salt: int,
    user: str,
) -> None:
    """Differential: pysnmp verifies our digest, decrypts our PDU and reads back what was asked."""
    target = target_for(auth, priv, names, name=user)
    assert target.engine is not None
    target.engine.boots, target.engine.time = boots, engine_time
    raw = target.request(msg_id, target.get.encode(request_id), now=0.0, salt=salt)
    message, usm, pdu = pysnmp_read_request(auth, priv, raw)
    flags = bytes(message[1][2])[0]
    assert (3, msg_id, 65507, 7 if priv else 5, 3) == (
        int(message[0]),
        int(message[1][0]),
        int(message[1][1]),
        flags,
        int(message[1][3]),
    )
    assert (ENGINE_ID, boots, engine_time, user.encode()) == (
        bytes(usm[0]),
        int(usm[1]),
        int(usm[2]),
        bytes(usm[3]),
    )
    assert (salt.to_bytes(8, "big") if priv else b"") == bytes(usm[5])
    assert isinstance(pdu, V2C.GetRequestPDU)
    assert request_id == int(V2C.apiPDU.get_request_id(pdu))
    assert [tuple(n) for n in names] == [tuple(oid) for oid, _ in V2C.apiPDU.get_varbinds(pdu)]


def test_discovery_request_is_what_pysnmp_expects() -> None:
    """The discovery probe: v3, reportable noAuthNoPriv, empty USM parameters, a GET of nothing."""
    raw = target_for("SHA", "AES").discovery_request(2**24 + 1, 2**24 + 2)
    message, rest = ber_decoder.decode(raw, asn1Spec=SNMPv3Message())
    usm, _ = ber_decoder.decode(bytes(message[2]), asn1Spec=UsmSecurityParameters())
    pdu = message[3][0][2].getComponent()
    assert (b"", 4, (b"", 0, 0, b"", b"", b"")) == (
        rest,
        bytes(message[1][2])[0],
        tuple(bytes(usm[i]) if i in (0, 3, 4, 5) else int(usm[i]) for i in range(6)),
    )
    assert (2**24 + 2, []) == (int(V2C.apiPDU.get_request_id(pdu)), list(V2C.apiPDU.get_varbinds(pdu)))


# --- judging answers ---------------------------------------------------------------------------


def answer(auth: str = "SHA", priv: str | None = "AES", **kw: Any) -> bytes:
    fields: dict[str, Any] = {
        "msg_id": 2**24 + 9,
        "request_id": 2**24 + 10,
        "boots": 7,
        "engine_time": 1000,
        "varbinds": [(UPTIME, rfc1902.TimeTicks(4242))],
    }
    fields.update(kw)
    raw = pysnmp_answer(auth, priv, **fields)
    assert raw is not None
    return raw


def judge(target: V3Target, raw: bytes, request_id: int = 2**24 + 10, now: float = 0.0) -> Any:
    return target.judge(raw, read_message(raw), request_id, now)


def test_tampered_answer_is_discarded_not_believed() -> None:
    """One flipped bit anywhere in an authentic answer: never an Answer (digest, or shape)."""
    raw = answer()
    target = target_for("SHA", "AES")
    assert isinstance(judge(target, raw), Answer)
    for at in range(len(raw)):
        flipped = bytearray(raw)
        flipped[at] ^= 0x01
        with contextlib.suppress(BerError):
            assert not isinstance(judge(target_for("SHA", "AES"), bytes(flipped)), Answer), at


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong auth key", Discarded("wrong digest in the agent's answer (v3 auth failure)")),
        ("other engine", Discarded("authenticated answer from another engine id")),
        ("other user", Discarded("authenticated answer for another user")),
        ("other request-id", Discarded("request-id does not match")),
        ("unencrypted", Discarded("response below the request's security level")),
        (
            "boots went back",
            Failed("auth", "not in time window (v3: the agent's engineBoots went back from 7 to 6)", True),
        ),
        (
            "time far behind",
            Failed(
                "auth",
                "not in time window (v3: the agent's engineTime 1000 s is more than 150 s behind 1351 s)",
                True,
            ),
        ),
        (
            "wrong priv key",
            Failed(
                "auth", "decryption error (v3: the agent's answer does not decrypt: privacy key mismatch)"
            ),
        ),
    ],
)
def test_answers_that_must_not_be_believed(case: str, expected: object) -> None:
    """Each way an answer with our msgID can be wrong gives its own outcome and reason."""
    target = target_for("SHA", "AES")
    now = 0.0
    raw: bytes
    if case == "wrong auth key":
        target.user = UsmUser.from_passwords("baton", "SHA", "another-pass", "AES", PRIV_PASS, CACHE)
        assert target.engine is not None
        target.engine.keys = target.user.keys(ENGINE_ID)
        raw = answer()
    elif case == "other engine":
        raw = answer(engine_id=b"\x80\x00\x00\x00\x01\x02\x03")
    elif case == "other user":
        raw = answer(user=b"someone")
    elif case == "other request-id":
        raw = answer(request_id=2**24 + 11)
    elif case == "unencrypted":
        raw = answer(priv=None)
    elif case == "boots went back":
        raw = answer(boots=6)
    elif case == "time far behind":
        raw = answer()  # engineTime 1000 again, 351 s after we last heard 1000
        now = 351.0
    else:  # wrong priv key
        target.user = UsmUser.from_passwords("baton", "SHA", AUTH_PASS, "AES", "another-pass", CACHE)
        assert target.engine is not None
        target.engine.keys = target.user.keys(ENGINE_ID)
        raw = answer()
    assert expected == judge(target, raw, now=now)


def test_time_window_follows_rfc3414_step_7() -> None:
    """Newer boots or later time are adopted; older boots, or 151 s behind, are outside."""
    keys = user_for("SHA", "AES").keys(ENGINE_ID)
    engine = Engine(ENGINE_ID, 1, 100, 100, 0.0, verified=False, keys=keys)
    assert engine.observe(5, 10, now=50.0) is None  # unverified: the first authentic values win
    assert (5, 10, 10, 50.0, True) == (
        engine.boots,
        engine.time,
        engine.latest,
        engine.synced_at,
        engine.verified,
    )
    assert engine.observe(5, 20, now=60.0) is None
    assert (5, 20) == (engine.boots, engine.latest)
    assert engine.observe(5, 15, now=61.0) is None  # a little behind: inside the window, not adopted
    assert 20 == engine.latest
    assert engine.observe(6, 1, now=62.0) is None  # the agent rebooted
    assert (6, 1) == (engine.boots, engine.time)
    assert engine.observe(6, 1, now=62.0 + 150) is None  # exactly 150 s behind: inside
    assert "150 s behind" in (engine.observe(6, 1, now=62.0 + 151) or "")
    assert "went back from 6 to 5" in (engine.observe(5, 10**6, now=300.0) or "")
    engine.observe(2**31 - 1, 0, now=400.0)
    assert "maximum" in (engine.observe(2**31 - 1, 5, now=401.0) or "")


def test_unauthenticated_reports_are_reasons_never_answers() -> None:
    """A plaintext Report (wrong digest, unknown user, unknown engine) is a refusal with its
    reason and the agent's engine id; a plaintext Response is discarded."""
    target = target_for("SHA", "AES")
    outcomes = []
    for oid in (
        (1, 3, 6, 1, 6, 3, 15, 1, 1, 5, 0),
        (1, 3, 6, 1, 6, 3, 15, 1, 1, 3, 0),
        (1, 3, 6, 1, 6, 3, 15, 1, 1, 4, 0),
    ):
        raw = noauth_message(V2C.ReportPDU, [(oid, rfc1902.Counter32(3))])
        outcomes.append(judge(target, raw))
    assert [
        Report("wrongDigest", "wrong digest (v3 auth failure)", False, ENGINE_ID, 7, 1000),
        Report("unknownUserName", "unknown v3 user", False, ENGINE_ID, 7, 1000),
        Report("unknownEngineID", "unknown engine id (v3 discovery failed)", False, ENGINE_ID, 7, 1000),
    ] == outcomes
    response = noauth_message(V2C.GetResponsePDU, [(UPTIME, rfc1902.TimeTicks(1))])
    assert Discarded("unauthenticated response to an authenticated request") == judge(target, response)


def noauth_message(pdu_cls: Any, varbinds: list[tuple[Any, Any]], msg_id: int = 2**24 + 9) -> bytes:
    """A noAuthNoPriv message from the agent (as net-snmp sends its failure reports)."""
    pdu = pdu_cls()
    V2C.apiPDU.set_defaults(pdu)
    V2C.apiPDU.set_request_id(pdu, 0)
    V2C.apiPDU.set_varbinds(pdu, varbinds)
    scoped = ScopedPDU()
    scoped.setComponentByPosition(0, ENGINE_ID)
    scoped.setComponentByPosition(1, b"")
    scoped.setComponentByPosition(2)
    scoped.getComponentByPosition(2).setComponentByType(pdu.tagSet, pdu)
    usm = UsmSecurityParameters()
    for i, value in enumerate((ENGINE_ID, 7, 1000, b"", b"", b"")):
        usm.setComponentByPosition(i, value)
    message = SNMPv3Message()
    message.setComponentByPosition(0, 3)
    header = message.setComponentByPosition(1).getComponentByPosition(1)
    for i, value in enumerate((msg_id, 65507, b"\x00", 3)):
        header.setComponentByPosition(i, value)
    message.setComponentByPosition(2, bytes(ber_encoder.encode(usm)))
    message.setComponentByPosition(3).getComponentByPosition(3).setComponentByPosition(0, scoped)
    return bytes(ber_encoder.encode(message))


def test_authenticated_not_in_time_window_report_updates_the_engine() -> None:
    """An authenticated notInTimeWindow report (agent rebooted) is believed: boots/time adopted."""
    target = target_for("SHA", "AES")
    raw = answer(
        priv=None,
        boots=8,
        engine_time=3,
        pdu_cls=V2C.ReportPDU,
        varbinds=[((1, 3, 6, 1, 6, 3, 15, 1, 1, 2, 0), rfc1902.Counter32(1))],
    )
    outcome = judge(target, raw, now=5.0)
    assert target.engine is not None
    assert Report("notInTimeWindow", "not in time window (v3)", True, ENGINE_ID, 8, 3) == outcome
    assert (8, 3, 5.0) == (target.engine.boots, target.engine.time, target.engine.synced_at)


_FLAGS_NONE = b"\x02\x03\x00\xff\xe3\x04\x01\x00"  # msgMaxSize 65507, msgFlags 0


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "truncated"),
        (b"\x30\x03\x02\x01\x01", "not SNMPv3"),
        (noauth_message(V2C.ReportPDU, [])[:-1], "length past the end"),
        (noauth_message(V2C.ReportPDU, []) + b"\x00", "trailing bytes"),
        (
            noauth_message(V2C.ReportPDU, []).replace(_FLAGS_NONE, _FLAGS_NONE[:-1] + b"\x02", 1),
            "privacy without",
        ),
        (
            noauth_message(V2C.ReportPDU, []).replace(_FLAGS_NONE, _FLAGS_NONE[:-1] + b"\x03", 1),
            "does not match msgFlags",
        ),
        (noauth_message(V2C.ReportPDU, []).replace(b"\x02\x01\x03\x04", b"\x02\x01\x02\x04", 1), "not USM"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_malformed_messages_raise_ber_error_with_the_cause(raw: bytes, why: str) -> None:
    """Each kind of malformed v3 message is refused by the reader, naming why."""
    with pytest.raises(BerError, match=why):
        read_message(raw)


_GOOD = answer()


@given(
    cut=st.integers(0, len(_GOOD)),
    flips=st.lists(st.tuples(st.integers(0, len(_GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=4),
)
@settings(max_examples=1500, deadline=None)
def test_mutated_answers_never_raise_and_are_never_believed(cut: int, flips: list[tuple[int, int]]) -> None:
    """Fuzz near the valid shape: the reader raises only BerError, judge() never raises and
    never returns an Answer for bytes that differ from the authentic ones."""
    raw = bytearray(_GOOD)
    for at, octet in flips:
        raw[at] = octet
    mutated = bytes(raw[:cut])
    assume(mutated != _GOOD)
    try:
        message = read_message(mutated)
    except BerError:
        return
    assert not isinstance(target_for("SHA", "AES").judge(mutated, message, 2**24 + 10, 0.0), Answer)


@given(st.binary(max_size=600))
@settings(max_examples=1500, deadline=None)
def test_random_bytes_only_ever_raise_ber_error(raw: bytes) -> None:
    """Fuzz: arbitrary datagrams either parse as a v3 message or raise BerError."""
    with contextlib.suppress(BerError):
        read_message(raw)
