#!/usr/bin/env python3
"""Turn each case's capture.pcap + charon logs into <case>/vector.json (stdlib + cryptography).

    python3 tests/vectors/strongswan/extract.py [case ...] [--dir DIR]

Sources, kept apart so the tests can check one against the other:
- the wire (capture.pcap): every IKE message in wire order, as sent;
- the initiator's charon log (ike=4, chd=4): g^ir, SKEYSEED, SK_*, the Child SA
  keys, the AUTH octets and (PSK) the AUTH value, the selected proposals; the
  responder's log must agree on every secret (checked here);
- decryption of the SK payloads with those keys (ikewalk.py): nonces, KE values
  and SPIs of the exchanges inside the IKE SA (CREATE_CHILD_SA).

The JSON layout is described in README.md beside this file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__:
    from . import ikewalk as w
else:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ikewalk as w  # type: ignore[import-not-found,no-redef]

HERE = Path(__file__).resolve().parent
ADDR_I = "192.0.2.1"
CASES = ("psk", "ecdsa", "rsa", "rsa-pss", "legacy", "rekey")

DESCRIPTIONS = {
    "psk": "IKE_SA_INIT + IKE_AUTH with PSK both ways, strongSwan default proposals",
    "ecdsa": "IKE_SA_INIT + IKE_AUTH with ECDSA P-256 certificates (P-384 CA), AES-GCM SK",
    "rsa": "IKE_SA_INIT + IKE_AUTH with RSA-2048 certificates, IKE fragmentation (RFC 7383)",
    "rsa-pss": "IKE_SA_INIT + IKE_AUTH with RSA-2048 certificates, charon rsa_pss = yes",
    "legacy": "IKE_SA_INIT + IKE_AUTH without RFC 7427 (signature_authentication = no): "
    "RSA-2048 initiator (method 1), ECDSA P-256 responder (method 9), P-384 CA",
    "rekey": "PSK; CREATE_CHILD_SA Child SA rekey with PFS, then IKE SA rekey, then Delete",
}

# --------------------------------------------------------------------------- pcap


@dataclass
class Datagram:
    time: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def read_pcap(path: Path) -> list[Datagram]:
    """Classic pcap, Ethernet, IPv4/UDP only (what dumpcap -P writes on a veth)."""
    data = path.read_bytes()
    magic = data[:4]
    if magic == b"\xd4\xc3\xb2\xa1":
        endian = "<"
    elif magic == b"\xa1\xb2\xc3\xd4":
        endian = ">"
    else:
        raise ValueError("not a classic microsecond pcap")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    if linktype != 1:
        raise ValueError(f"unexpected linktype {linktype}")
    out = []
    pos = 24
    while pos + 16 <= len(data):
        sec, usec, incl, orig = struct.unpack_from(endian + "IIII", data, pos)
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        if incl != orig:
            raise ValueError("truncated frame in capture")
        if struct.unpack_from("!H", frame, 12)[0] != 0x0800:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        flags_frag = struct.unpack_from("!H", ip, 6)[0]
        if flags_frag & 0x3FFF:
            raise ValueError("IP fragment in capture: IKE fragmentation expected instead")
        if ip[9] != 17:
            continue
        total = struct.unpack_from("!H", ip, 2)[0]
        udp = ip[ihl:total]
        sport, dport, ulen = struct.unpack_from("!HHH", udp)
        out.append(
            Datagram(
                sec + usec / 1e6,
                socket.inet_ntoa(ip[12:16]),
                sport,
                socket.inet_ntoa(ip[16:20]),
                dport,
                udp[8:ulen],
            )
        )
    return out


# --------------------------------------------------------------------------- logs

LINE = re.compile(r"^\S+ (\d+)\[(\w+)\] (?:<([^>]*)> )?(.*)$")
DUMP_HEAD = re.compile(r"^(.*) => (\d+) bytes @ 0x[0-9a-f]+$")
DUMP_LINE = re.compile(r"^\s*(\d+): ((?:[0-9A-F]{2} )*[0-9A-F]{2})")


@dataclass
class Event:
    thread: str
    group: str
    tag: str
    text: str
    dump: bytearray | None = None
    size: int = 0


def read_log(path: Path) -> list[Event]:
    """charon filelog lines; hex dumps (`X => n bytes @ p` + rows) become one event."""
    events: list[Event] = []
    open_dump: dict[str, Event] = {}
    for raw in path.read_text().splitlines():
        m = LINE.match(raw)
        if not m:
            continue
        thread, group, tag, text = m.group(1), m.group(2), m.group(3) or "", m.group(4)
        row = DUMP_LINE.match(text)
        cur = open_dump.get(thread)
        if row and cur is not None and cur.dump is not None and int(row.group(1)) == len(cur.dump):
            cur.dump.extend(bytes.fromhex(row.group(2)[:47]))
            continue
        head = DUMP_HEAD.match(text)
        if head:
            ev = Event(thread, group, tag, head.group(1).strip(), bytearray(), int(head.group(2)))
            open_dump[thread] = ev
        else:
            ev = Event(thread, group, tag, text)
            open_dump.pop(thread, None)
        events.append(ev)
    for ev in events:
        if ev.dump is not None and len(ev.dump) != ev.size:
            raise ValueError(f"{path.name}: dump '{ev.text}' has {len(ev.dump)}/{ev.size} bytes")
    return events


IKE_KEYS = {
    "shared Diffie Hellman secret": "g_ir",
    "SKEYSEED": "skeyseed",
    "Sk_d secret": "sk_d",
    "Sk_ai secret": "sk_ai",
    "Sk_ar secret": "sk_ar",
    "Sk_ei secret": "sk_ei",
    "Sk_er secret": "sk_er",
    "Sk_pi secret": "sk_pi",
    "Sk_pr secret": "sk_pr",
}
CHILD_KEYS = {
    "DH secret": "g_ir",
    "seed": "seed",
    "encryption initiator key": "encr_i",
    "encryption responder key": "encr_r",
    "integrity initiator key": "integ_i",
    "integrity responder key": "integ_r",
}


@dataclass
class LogFacts:
    ike: list[dict[str, str]] = field(default_factory=list)
    child: list[dict[str, str]] = field(default_factory=list)
    auth: list[dict[str, str]] = field(default_factory=list)
    ike_proposals: list[str] = field(default_factory=list)
    esp_proposals: list[str] = field(default_factory=list)
    child_spis: list[tuple[str, str]] = field(default_factory=list)
    summaries: list[tuple[str, str]] = field(default_factory=list)  # (sent/received, text)


def log_facts(events: list[Event]) -> LogFacts:
    facts = LogFacts()
    previous = ""
    for ev in events:
        if ev.dump is not None:
            previous, last = ev.text, previous
            value = bytes(ev.dump).hex()
            if ev.text in IKE_KEYS:
                if ev.text == "shared Diffie Hellman secret" or not facts.ike:
                    facts.ike.append({})
                facts.ike[-1][IKE_KEYS[ev.text]] = value
            elif ev.text in CHILD_KEYS and ev.group == "CHD":
                # A group starts at the PFS secret, or at the seed when there is none.
                if ev.text == "DH secret" or (ev.text == "seed" and last != "DH secret"):
                    facts.child.append({})
                facts.child[-1][CHILD_KEYS[ev.text]] = value
            elif ev.text.startswith("octets = message + nonce"):
                facts.auth.append({"octets": value})
            elif ev.text.startswith("AUTH = prf(prf(secret, keypad), octets)"):
                facts.auth[-1]["psk_auth"] = value
            continue
        t = ev.text
        if t.startswith("selected proposal: IKE:"):
            facts.ike_proposals.append(t.split(": ", 1)[1])
        elif t.startswith("selected proposal: ESP:"):
            facts.esp_proposals.append(t.split(": ", 1)[1])
        m = re.search(r"CHILD_SA \S+ established with SPIs ([0-9a-f]{8})_i ([0-9a-f]{8})_o", t)
        if m and not t.startswith("outbound"):
            facts.child_spis.append((m.group(1), m.group(2)))
        m = re.match(r"(generating|parsed) (\S+ (?:request|response) \d+ \[.*\])$", t)
        if m:
            facts.summaries.append((m.group(1), m.group(2)))
    return facts


# --------------------------------------------------------------------------- assembly


def transforms_json(p: w.Proposal) -> list[dict[str, int | None]]:
    return [{"type": t, "id": i, "key_length": k} for t, i, k in p.transforms]


def keys_for(sa: dict[str, Any], from_initiator: bool) -> w.SkKeys:
    encr = int(sa["encr_id"])
    integ = sa["integ_id"]
    side = "i" if from_initiator else "r"
    return w.SkKeys(
        encr,
        bytes.fromhex(str(sa[f"sk_e{side}"])),
        int(integ) if integ is not None else None,
        bytes.fromhex(str(sa.get(f"sk_a{side}") or "")),
    )


def build(case: str, base: Path = HERE) -> dict[str, Any]:
    d = base / case
    grams = read_pcap(d / "capture.pcap")
    fi = log_facts(read_log(d / "initiator.log"))
    fr = log_facts(read_log(d / "responder.log"))
    # The two charons must agree on every secret they both derived.
    if fi.ike != fr.ike or fi.child != fr.child:
        raise ValueError(f"{case}: initiator and responder logs disagree on keys")
    # Both log the initiator's AUTH octets first, then the responder's.
    if [a["octets"] for a in fi.auth] != [a["octets"] for a in fr.auth] or len(fi.auth) != 2:
        raise ValueError(f"{case}: unexpected AUTH octets in the logs")

    messages: list[dict[str, Any]] = []
    ike_sas: list[dict[str, Any]] = []
    child_sas: list[dict[str, Any]] = []
    by_spi: dict[tuple[bytes, bytes], int] = {}
    pending: dict[tuple[bytes, int, bool], list[w.Fragment]] = {}
    requests: dict[tuple[bytes, int], tuple[int, list[w.Payload]]] = {}
    child_logs = iter(fi.child)
    ike_logs = iter(fi.ike)
    ike_props = iter(fi.ike_proposals)
    esp_props = iter(fi.esp_proposals)

    for g in grams:
        raw = g.payload
        marker = False
        if g.dport == 4500 or g.sport == 4500:
            if raw == b"\xff":
                continue  # NAT-T keepalive (RFC 3948 §2.3)
            if raw[:4] != b"\x00\x00\x00\x00":
                continue  # ESP, not part of these vectors
            raw, marker = raw[4:], True
        h = w.parse_header(raw)
        entry: dict[str, Any] = {
            "index": len(messages),
            "time": round(g.time, 6),
            "direction": "i2r" if g.src == ADDR_I else "r2i",
            "src": f"{g.src}:{g.sport}",
            "dst": f"{g.dst}:{g.dport}",
            "non_esp_marker": marker,
            "exchange": w.EXCHANGES.get(h.exchange, str(h.exchange)),
            "message_id": h.message_id,
            "response": h.is_response,
            "spi_i": h.spi_i.hex(),
            "spi_r": h.spi_r.hex(),
            "data": raw.hex(),
        }
        messages.append(entry)
        if h.exchange == 34:
            payloads = w.walk(h.next_payload, raw, w.HEADER.size)
            entry["payloads"] = [p.type for p in payloads]
            ke = w.first(payloads, w.PT_KE)
            nonce = w.first(payloads, w.PT_NONCE)
            if ke is None or nonce is None:
                continue  # e.g. INVALID_KE_PAYLOAD / COOKIE answers (none expected here)
            if not h.is_response:
                ike_sas.append(
                    {
                        "index": len(ike_sas),
                        "created_by": [entry["index"]],
                        "rekey_of": None,
                        "spi_i": h.spi_i.hex(),
                        "ke_i": ke.body[4:].hex(),
                        "nonce_i": nonce.body.hex(),
                        "dh_group": struct.unpack_from("!H", ke.body)[0],
                    }
                )
            else:
                sa = ike_sas[-1]
                prop = _chosen(payloads)
                _set_ike(sa, prop, next(ike_props), next(ike_logs))
                sa.update(spi_r=h.spi_r.hex(), ke_r=ke.body[4:].hex(), nonce_r=nonce.body.hex())
                sa["created_by"].append(entry["index"])
                by_spi[(h.spi_i, h.spi_r)] = sa["index"]
            continue
        sa = ike_sas[by_spi[(h.spi_i, h.spi_r)]]
        entry["ike_sa"] = sa["index"]
        got = w.decrypt_message(raw, keys_for(sa, h.from_initiator))
        if isinstance(got, w.Fragment):
            entry["fragment"] = {"number": got.number, "total": got.total}
            entry["fragment_plaintext"] = got.plaintext.hex()
            key = (h.spi_i, h.message_id, h.is_response)
            pending.setdefault(key, []).append(got)
            if len(pending[key]) < got.total:
                continue
            inner, plain = w.reassemble(pending.pop(key))
        else:
            inner, plain = got
        entry["first_payload"] = inner
        entry["plaintext"] = plain.hex()
        payloads = w.walk(inner, plain)
        entry["payloads"] = [p.type for p in payloads]
        if not h.is_response:
            requests[(h.spi_i, h.message_id)] = (entry["index"], payloads)
            continue
        req_index, req = requests.pop((h.spi_i, h.message_id))
        if h.exchange == 35 and w.first(payloads, w.PT_SA):
            child_sas.append(
                _child(
                    sa,
                    req_index,
                    entry["index"],
                    req,
                    payloads,
                    next(esp_props),
                    next(child_logs),
                    ike_nonces=True,
                )
            )
        elif h.exchange == 36 and w.first(payloads, w.PT_SA):
            prop = _chosen(payloads)
            if prop.protocol == 1:  # IKE SA rekey (RFC 7296 §1.3.2)
                new = _ike_rekey(
                    sa,
                    len(ike_sas),
                    req_index,
                    entry["index"],
                    req,
                    payloads,
                    prop,
                    next(ike_props),
                    next(ike_logs),
                )
                ike_sas.append(new)
                by_spi[(bytes.fromhex(new["spi_i"]), bytes.fromhex(new["spi_r"]))] = new["index"]
            else:
                child_sas.append(
                    _child(
                        sa,
                        req_index,
                        entry["index"],
                        req,
                        payloads,
                        next(esp_props),
                        next(child_logs),
                        ike_nonces=False,
                    )
                )
    for sa in ike_sas:
        sa.pop("_prf", None)
    if [(c["spi_i"], c["spi_r"]) for c in child_sas] != fi.child_spis:
        raise ValueError(f"{case}: Child SA SPIs from the wire and the log differ")
    if list(ike_logs) or list(child_logs):
        raise ValueError(f"{case}: log has key groups not matched to exchanges")

    auth_msgs = [m for m in messages if m["exchange"] == "IKE_AUTH" and "plaintext" in m]
    authentication: dict[str, Any] = {
        "log": [
            dict(a, side=side) for a, side in zip(fi.auth, ("initiator", "responder"), strict=True)
        ],
        "auth_messages": [m["index"] for m in auth_msgs],
    }
    if (d / "ca.pem").exists():
        authentication["method"] = "certificate"
        for name in ("ca", "initiator", "responder"):
            authentication[f"{name}_cert_pem"] = (d / f"{name}.pem").read_text()
        for name in ("initiator", "responder"):
            authentication[f"{name}_key_pem"] = (d / f"{name}.key.pem").read_text()
    else:
        authentication["method"] = "psk"
        m = re.search(r'secret = "([^"]+)"', (d / "swanctl-initiator.conf").read_text())
        authentication["psk"] = m.group(1) if m else None

    first_time = dt.datetime.fromtimestamp(grams[0].time, dt.UTC)
    return {
        "case": case,
        "description": DESCRIPTIONS[case],
        "source": "strongSwan 5.9.8 (Debian 12), charon <-> charon, made by make_vectors.py",
        "captured": first_time.isoformat().replace("+00:00", "Z"),
        "initiator": ADDR_I,
        "responder": "192.0.2.2",
        "messages": messages,
        "ike_sas": ike_sas,
        "child_sas": child_sas,
        "authentication": authentication,
        "strongswan_summaries": [f"{k} {t}" for k, t in fi.summaries],
    }


def _set_ike(sa: dict[str, Any], prop: w.Proposal, name: str, keys: dict[str, str]) -> None:
    ids = {t: (i, k) for t, i, k in prop.transforms}
    sa["proposal"] = name
    sa["transforms"] = transforms_json(prop)
    sa["encr_id"], sa["encr_key_bits"] = ids[1]
    sa["integ_id"] = ids[3][0] if 3 in ids else None
    sa["prf_id"] = ids[2][0]
    sa["dh_group"] = ids[4][0]
    sa.update(sk_ai=None, sk_ar=None)  # stay null with an AEAD (no integrity keys)
    sa.update(keys)


def _chosen(payloads: list[w.Payload]) -> w.Proposal:
    """The first proposal of the SA payload (the only one in a response)."""
    p = w.first(payloads, w.PT_SA)
    if p is None:
        raise ValueError("exchange without an SA payload")
    return w.proposals(p.body)[0]


def _nonce(payloads: list[w.Payload]) -> str:
    p = w.first(payloads, w.PT_NONCE)
    if p is None:
        raise ValueError("exchange without a Nonce")
    return p.body.hex()


def _ke(payloads: list[w.Payload]) -> str | None:
    p = w.first(payloads, w.PT_KE)
    return p.body[4:].hex() if p else None


def _child(
    sa: dict[str, Any],
    req_i: int,
    resp_i: int,
    req: list[w.Payload],
    resp: list[w.Payload],
    name: str,
    keys: dict[str, str],
    *,
    ike_nonces: bool,
) -> dict[str, Any]:
    req_prop = _chosen(req)
    resp_prop = _chosen(resp)
    rekey = [n for n in w.notifies(req) if n[1] == 16393]  # REKEY_SA
    child: dict[str, Any] = {
        "ike_sa": sa["index"],
        "created_by": [req_i, resp_i],
        "rekey_of_spi": rekey[0][2].hex() if rekey else None,
        "protocol": resp_prop.protocol,
        "spi_i": req_prop.spi.hex(),
        "spi_r": resp_prop.spi.hex(),
        "proposal": name,
        "transforms": transforms_json(resp_prop),
        "nonce_i": sa["nonce_i"] if ike_nonces else _nonce(req),
        "nonce_r": sa["nonce_r"] if ike_nonces else _nonce(resp),
        "ke_i": None if ike_nonces else _ke(req),
        "ke_r": None if ike_nonces else _ke(resp),
        "g_ir": None,
    }
    child.update(keys)
    return child


def _ike_rekey(
    old: dict[str, Any],
    index: int,
    req_i: int,
    resp_i: int,
    req: list[w.Payload],
    resp: list[w.Payload],
    prop: w.Proposal,
    name: str,
    keys: dict[str, str],
) -> dict[str, Any]:
    req_prop = _chosen(req)
    ke_i = w.first(req, w.PT_KE)
    new: dict[str, Any] = {
        "index": index,
        "created_by": [req_i, resp_i],
        "rekey_of": old["index"],
        "spi_i": req_prop.spi.hex(),
        "spi_r": prop.spi.hex(),
        "ke_i": _ke(req),
        "ke_r": _ke(resp),
        "nonce_i": _nonce(req),
        "nonce_r": _nonce(resp),
        "dh_group": struct.unpack_from("!H", ke_i.body)[0] if ke_i else None,
    }
    _set_ike(new, prop, name, keys)
    return new


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="*", choices=[[], *CASES], default=[])
    parser.add_argument("--dir", type=Path, default=HERE, help="base directory (default: here)")
    args = parser.parse_args(argv)
    for case in args.cases or CASES:
        if not (args.dir / case / "capture.pcap").exists():
            print(f"skip {case}: no capture", file=sys.stderr)
            continue
        vec = build(case, args.dir)
        (args.dir / case / "vector.json").write_text(json.dumps(vec, indent=1) + "\n")
        print(
            f"{case}: {len(vec['messages'])} messages, {len(vec['ike_sas'])} IKE SAs, "
            f"{len(vec['child_sas'])} Child SAs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
