#!/usr/bin/env python3
"""Odd-but-parseable SIP requests against SIPp 3.6.1 as the PBX, and through sipfront.

Finds requests that (a) sipfront forwards to its backend and (b) crash or hang SIPp running the built-in UAS
scenario (`sipp -sn uas`) over UDP. Everything stays on loopback; every loop is bounded in count and time; every
process started here is stopped by its own pid (never by name).

Modes (all write under --work, default /tmp/oddreq):

  fuzz      structured mutations of valid INVITE/REGISTER/OPTIONS/BYE, and of an ACK/BYE inside a dialog that a
            valid INVITE just opened, sent straight to SIPp; a valid INVITE every --probe-every messages checks
            that SIPp still answers. SIPp is restarted after each crash or hang; the last --window messages are
            replayed one by one against a fresh SIPp to find the culprit, which is minimised (stacked mutations
            dropped one by one, long payloads shortened by bisection). --skip-known leaves out the classes
            already found (README.md). Bounded by --max-messages and --max-seconds (+ --grace to finish the
            last replay). Writes fuzz-results.json; SIPp logs (-trace_msg: large) go to --work.
  forward   send each file of a corpus directory (default: this directory's *.sip) to sipfront in front of a
            Python capture "PBX": did sipfront forward it (and unchanged?), what did it answer.
  e2e       send each file of the corpus to sipfront in front of SIPp: did SIPp receive it, did SIPp die.
  direct    send each file of the corpus straight to SIPp: did SIPp die.

Examples:
  python3 fuzz_sipp.py fuzz --max-messages 20000 --max-seconds 600 --seed 1
  python3 fuzz_sipp.py fuzz --max-seconds 480 --seed 2 --skip-known
  python3 fuzz_sipp.py forward --sipfront /tmp/sipfront-old-release
  python3 fuzz_sipp.py e2e --sipfront /tmp/sipfront-old-release
  python3 fuzz_sipp.py direct

Placeholders in the corpus files: @PROXY@ (where the request is sent: sipfront, or SIPp in direct mode), @PBX@
(the backend), @LOCAL@ (our socket), @BRANCH@, @CALLID@.
"""

import argparse
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FRONT_ADDR = ("127.0.77.1", 5070)   # sipfront's UDP listener
PBX_ADDR = ("127.0.77.2", 5080)     # SIPp UAS (or the capture PBX)
LOCAL_IP = "127.0.77.3"             # our sockets
MAX_UDP = 65000

# ---------------------------------------------------------------------------------------------------------------
# Valid templates (placeholders filled at send time). Latin-1 text so any byte can be represented.

SDP = ("v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.77.3\r\ns=-\r\nc=IN IP4 127.0.77.3\r\nt=0 0\r\n"
       "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def _req(method, ruri, extra="", body="", ctype=None):
    h = [
        f"{method} {ruri} SIP/2.0",
        "Via: SIP/2.0/UDP @LOCAL@;branch=@BRANCH@;rport",
        "Max-Forwards: 70",
        "From: <sip:alice@@LOCAL@>;tag=@CALLID@-ft",
        f"To: <sip:service@@PROXY@>",
        "Call-ID: @CALLID@",
        f"CSeq: 1 {method}",
        "Contact: <sip:alice@@LOCAL@>",
    ]
    if extra:
        h += extra.split("\r\n")
    if ctype:
        h.append(f"Content-Type: {ctype}")
    h.append(f"Content-Length: {len(body)}")
    return "\r\n".join(h) + "\r\n\r\n" + body


# In-dialog templates: sent after a valid INVITE with the same Call-ID was answered 200; @TOTAG@ is SIPp's tag.
DIALOG = {"ACK-in-dialog", "BYE-in-dialog"}

TEMPLATES = {
    "INVITE": _req("INVITE", "sip:service@@PROXY@", body=SDP, ctype="application/sdp"),
    "INVITE0": _req("INVITE", "sip:service@@PROXY@"),
    "REGISTER": _req("REGISTER", "sip:@PROXY@", extra="Expires: 3600").replace(
        "To: <sip:service@@PROXY@>", "To: <sip:alice@@PROXY@>"),
    "OPTIONS": _req("OPTIONS", "sip:service@@PROXY@", extra="Accept: application/sdp"),
    "BYE": _req("BYE", "sip:service@@PROXY@").replace("To: <sip:service@@PROXY@>",
                                                       "To: <sip:service@@PROXY@>;tag=@CALLID@-tt"),
    "ACK-in-dialog": _req("ACK", "sip:service@@PROXY@").replace(
        "To: <sip:service@@PROXY@>", "To: <sip:service@@PROXY@>;tag=@TOTAG@").replace("CSeq: 1 ACK", "CSeq: 1 ACK"),
    "BYE-in-dialog": _req("BYE", "sip:service@@PROXY@").replace(
        "To: <sip:service@@PROXY@>", "To: <sip:service@@PROXY@>;tag=@TOTAG@").replace("CSeq: 1 BYE", "CSeq: 2 BYE"),
}

# ---------------------------------------------------------------------------------------------------------------
# Message surgery on the template text (CRLF lines; the body is kept apart).


def split_msg(text):
    head, sep, body = text.partition("\r\n\r\n")
    return head.split("\r\n"), body


def join_msg(lines, body, fix_len=True):
    if fix_len:
        lines = [f"Content-Length: {len(body.encode('latin-1'))}" if l.lower().startswith("content-length:")
                 else l for l in lines]
    return "\r\n".join(lines) + "\r\n\r\n" + body


def hname(line):
    return line.split(":", 1)[0].strip().lower() if ":" in line else None


COMPACT = {"i": "call-id", "f": "from", "t": "to", "v": "via", "l": "content-length", "m": "contact",
           "c": "content-type"}


def find(lines, name):
    name = name.lower()
    return [i for i, l in enumerate(lines[1:], 1) if COMPACT.get(hname(l), hname(l)) == name]


# Each op: (kind, *args) -> a function of the message text. Kept as tuples so results are JSON and minimisable.

def apply_op(text, op):
    lines, body = split_msg(text)
    kind = op[0]
    fix_len = True
    if kind == "set":                       # ("set", header, value): replace the value of the first header
        _, h, v = op
        idx = find(lines, h)
        if idx:
            lines[idx[0]] = lines[idx[0]].split(":", 1)[0] + ": " + v
        else:
            lines.insert(1, f"{h}: {v}")
        if h.lower() == "content-length":
            fix_len = False
    elif kind == "add":                     # ("add", header, value, where): one more header line
        _, h, v, where = op
        idx = find(lines, h)
        pos = {"after": (idx[-1] + 1 if idx else len(lines)), "before": (idx[0] if idx else 1),
               "end": len(lines)}[where]
        lines.insert(pos, f"{h}: {v}")
        if h.lower() == "content-length":
            fix_len = False
    elif kind == "del":                     # ("del", header)
        for i in reversed(find(lines, op[1])):
            del lines[i]
    elif kind == "rawline":                 # ("rawline", header, new_line): replace the whole line
        _, h, new = op
        idx = find(lines, h)
        if idx:
            lines[idx[0]] = new
    elif kind == "ruri":                    # ("ruri", uri)
        m, _, v = lines[0].split(" ", 2)
        lines[0] = f"{m} {op[1]} {v}"
    elif kind == "method":                  # ("method", m): start line and CSeq
        _, m = op
        lines[0] = m + " " + lines[0].split(" ", 1)[1]
        for i in find(lines, "cseq"):
            n = lines[i].split(":", 1)[1].split()[0]
            lines[i] = f"CSeq: {n} {m}"
    elif kind == "startmethod":             # ("startmethod", m): start line only
        lines[0] = op[1] + " " + lines[0].split(" ", 1)[1]
    elif kind == "fill":                    # ("fill", n, header): n extra header lines
        _, n, h = op
        lines[1:1] = [f"{h}: x{i}" for i in range(n)] if h != "Via" else [
            f"Via: SIP/2.0/UDP 127.0.77.9:{5000 + i % 1000};branch=z9hG4bK-f{i}" for i in range(n)]
    elif kind == "body":                    # ("body", ctype, body)
        _, ct, b = op
        body = b
        for i in reversed(find(lines, "content-type")):
            del lines[i]
        if ct:
            lines.insert(len(lines) - 1, f"Content-Type: {ct}")
    elif kind == "eol":                     # ("eol", "lf"|"mixed")
        text = join_msg(lines, body)
        head, _, b = text.partition("\r\n\r\n")
        if op[1] == "lf":
            return head.replace("\r\n", "\n") + "\n\n" + b
        hl = head.split("\r\n")
        return "\r\n".join(hl[:3]) + "\n" + "\r\n".join(hl[3:]) + "\r\n\r\n" + b
    elif kind == "fold":                    # ("fold", header): the value on a continuation line
        idx = find(lines, op[1])
        if idx:
            n, v = lines[idx[0]].split(":", 1)
            lines[idx[0]] = f"{n}:\r\n {v.strip()}"
    elif kind == "bytes":                   # ("bytes", header, pos_frac, action, byte): one byte edit in a value
        _, h, frac, act, byte = op
        idx = find(lines, h) if h != "@start" else [0]
        if idx:
            i = idx[0]
            l = lines[i]
            base = 0 if h == "@start" else l.index(":") + 1
            p = base + int((len(l) - base) * frac)
            if act == "ins":
                l = l[:p] + byte + l[p:]
            elif act == "rep":
                l = l[:p] + byte + l[p + 1:]
            else:
                l = l[:p] + l[p + 1:]
            lines[i] = l
    elif kind == "trailing":                # ("trailing", data): bytes after the body, Content-Length kept
        return join_msg(lines, body) + op[1]
    else:
        raise ValueError(op)
    return join_msg(lines, body, fix_len)


def build(template, ops):
    text = TEMPLATES[template]
    for op in ops:
        text = apply_op(text, op)
    return text


def fill(text, proxy, pbx, local, branch, callid):
    return (text.replace("@PROXY@", proxy).replace("@PBX@", pbx).replace("@LOCAL@", local)
            .replace("@BRANCH@", branch).replace("@CALLID@", callid)).encode("latin-1")


# ---------------------------------------------------------------------------------------------------------------
# Mutation vocabulary.

def long(n, c="a"):
    return c * n


LENS = [300, 2100, 4200, 21000, 40000]
GENERIC = ["", " ", ";", ",", "<", ">", "<>", "\"", "\"unterminated <sip:a@b>", "*", "\\", "%00", "\x00",
           "a\x00b", "\x01\x02\x1b[2J", "\x7f", "\xff\xfe", "\xc3\xa9t\xc3\xa9", "\t", "a\rb", "-1", "0",
           "2147483648", "4294967295", "4294967296", "99999999999999999999", "+5", "1e3", "0x10",
           "sip:", "tel:+15551234", "<tel:+15551234>", "http://x/", "<sip:@>", "<sip:>", "<<sip:a@b>>",
           "nobody", "$(reboot)", "%s%s%s%n", "a,b,c", ";tag=", "@", ":", "[last_Via:]", "[call_id]"]
PER_HEADER = {
    "CSeq": ["0 {M}", "2147483648 {M}", "4294967295 {M}", "1  {M}", "1\t{M}", "01 {M}", "1 {M} extra",
             "-1 {M}", "+1 {M}", "1 {m}"],
    "Via": ["SIP/2.0/UDP @LOCAL@", "SIP/2.0/UDP @LOCAL@;branch=", "SIP/2.0/UDP @LOCAL@;branch=abc",
            "SIP/2.0/UDP @LOCAL@;branch=z9hG4bK", "SIP/2.0/FOO @LOCAL@;branch=@BRANCH@",
            "SIP/2.0/UDP @LOCAL@;branch=@BRANCH@;rport=abc", "SIP/2.0/UDP @LOCAL@;branch=@BRANCH@;received=junk",
            "SIP/2.0/UDP 127.0.77.3:0;branch=@BRANCH@", "SIP/2.0/UDP 127.0.77.3:99999;branch=@BRANCH@",
            "SIP/2.0/UDP [::1]:5060;branch=@BRANCH@", "SIP/2.0/UDP @LOCAL@;branch=@BRANCH@, garbage",
            "SIP/2.0/UDP @LOCAL@;branch=@BRANCH@;maddr=203.0.113.1", "SIP/2.0/UDP @LOCAL@;branch=@BRANCH@;;;",
            "SIP/2.0/UDP @LOCAL@;branch=@BRANCH@;branch=z9hG4bK-second", "SIP/2.0/UDP host_with_underscore;branch=@BRANCH@",
            "SIP/2.0/UDP @LOCAL@;branch=@BRANCH@ (comment)"],
    "From": ["nobody", "<sip:alice@@LOCAL@>", "<sip:alice@@LOCAL@>;tag=", "<sip:alice@@LOCAL@>;tag=a;tag=b",
             "\"x <sip:alice@@LOCAL@>;tag=1", "<sip:alice@@LOCAL@;tag=1", "sip:alice@@LOCAL@;tag=1",
             "tel:+1555;tag=1", "<>;tag=1", "\"" + long(3000) + "\" <sip:a@b>;tag=1"],
    "To": ["nobody", "<sip:service@@PROXY@>;tag=", "<sip:service@@PROXY@>;tag=a;tag=b",
           "<sip:service@@PROXY@>;tag=unknown-dialog", "<sip:service@@PROXY@", "tel:+1555", "<>",
           "<sip:service@@PROXY@>;tag=" + long(3000)],
    "Call-ID": ["a b", "<@CALLID@>", "@CALLID@@@@", "@CALLID@;param", long(3000), long(3000) + "@CALLID@"],
    "Max-Forwards": ["0", "1", "255", "256", "4294967295", "00070"],
    "Content-Length": ["+0", "0 0", "00000", "0000000000", "-0"],
    "Contact": ["*", "<>", "garbage", "<sip:a@b>;expires=-1", "<sip:a@b>;expires=4294967296",
                ",".join(["<sip:a%d@b>" % i for i in range(300)]), "<sip:a@b>, *"],
    "Expires": ["-1", "abc", "4294967296", "0", " "],
    "Record-Route": ["garbage", "<sip:;lr>", "<sip:127.0.77.9:1;lr>", long(25000)],
    "Route": ["garbage", "<sip:127.0.77.9:1;lr>", "<tel:1>"],
    "Content-Type": ["garbage", "multipart/mixed", "application/sdp;charset=\x00"],
    "Accept": ["x" * 25000],
    "User-Agent": ["x" * 25000, "\x00"],
}
RURIS = ["tel:+15551234", "sip:", "sip:@", "sip:service@", "sip:@@PROXY@", "http://example.com/", "urn:x:y",
         "sips:service@@PROXY@", "sip:service@@PROXY@;maddr=203.0.113.1", "sip:a@b?Call-ID=evil", "sip:a@[::1",
         "sip:service@127.0.77.2:99999", "<sip:service@@PROXY@>", "sip:%00@@PROXY@", "mailto:a@b",
         "sip:" + long(3000) + "@@PROXY@", "sip:" + long(21000) + "@@PROXY@", "sip:a@b;lr;lr;lr",
         "sip:service@@PROXY@;transport=sctp", "a:b", "sip:service@@PROXY@\x00"]
METHODS = ["invite", "Invite", "FOO", "ÿ", "INVITE-", "A" * 2000, "MESSAGE", "PRACK", "UPDATE", "INFO", "ACK",
           "CANCEL", "SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER"]
HEADERS = ["Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards", "Contact", "Content-Length", "Content-Type"]


def random_op(rng, template):
    r = rng.random()
    method = TEMPLATES[template].split(" ", 1)[0]
    if r < 0.22:
        h = rng.choice(list(PER_HEADER))
        v = rng.choice(PER_HEADER[h]).replace("{M}", method).replace("{m}", method.lower())
        return ("set", h, v)
    if r < 0.34:
        h = rng.choice(HEADERS + ["Expires", "Record-Route", "Route", "X-Odd"])
        return ("set", h, rng.choice(GENERIC))
    if r < 0.40:
        h = rng.choice(HEADERS + ["Record-Route", "Subject", "User-Agent"])
        return ("set", h, long(rng.choice(LENS), rng.choice("a;<,")))
    if r < 0.52:
        h = rng.choice(HEADERS)
        pool = PER_HEADER.get(h, GENERIC) + GENERIC[:10]
        v = rng.choice(pool).replace("{M}", method).replace("{m}", method.lower())
        if h == "Call-ID":
            v = rng.choice(["@CALLID@-other", v])
        if h == "CSeq":
            v = rng.choice([f"2 {method}", v])
        return ("add", h, v, rng.choice(["after", "before", "end"]))
    if r < 0.60:
        return ("ruri", rng.choice(RURIS))
    if r < 0.65:
        return (rng.choice(["method", "startmethod"]), rng.choice(METHODS))
    if r < 0.70:
        return ("rawline", rng.choice(HEADERS), rng.choice([
            "Call-ID :@CALLID@", "CALL-ID: @CALLID@", "i: @CALLID@", "Call-ID:\t@CALLID@", "Call-ID:@CALLID@",
            "v: SIP/2.0/UDP @LOCAL@;branch=@BRANCH@", "t: <sip:service@@PROXY@>", "f: <sip:a@b>;tag=1",
            "CSeq : 1 INVITE", "cseq: 1 INVITE", "l: 0", "Via:SIP/2.0/UDP @LOCAL@;branch=@BRANCH@",
            "To:<sip:service@@PROXY@>", "From:<sip:a@b>;tag=x", "X-A: b\x00c"]))
    if r < 0.73:
        return ("fold", rng.choice(HEADERS))
    if r < 0.77:
        return ("fill", rng.choice([60, 200, 700, 1500]), rng.choice(["X-Pad", "Via", "Record-Route"]))
    if r < 0.82:
        return ("body", rng.choice([None, "application/sdp", "multipart/mixed;boundary=x", "text/plain"]),
                rng.choice(["", "v=0\r\n", "\x00" * 40, "v=0\r\nc=IN IP4 " + long(3000) + "\r\n",
                            "v=0\r\nm=audio 99999 RTP/AVP 0\r\n", "v=0\r\nm=audio -1 RTP/AVP\r\n",
                            SDP.replace("IN IP4 127.0.77.3", "IN IP6 ::::1"), long(20000, "\n")]))
    if r < 0.85:
        return ("eol", rng.choice(["lf", "mixed"]))
    if r < 0.87:
        return ("trailing", rng.choice(["junk", "\x00" * 10, "\r\n\r\nINVITE sip:x SIP/2.0\r\n\r\n"]))
    if r < 0.90:
        return ("del", rng.choice(["Contact", "Max-Forwards", "Content-Length", "Content-Type", "Expires"]))
    return ("bytes", rng.choice(HEADERS + ["@start"]), round(rng.random(), 2), rng.choice(["ins", "rep", "del"]),
            chr(rng.choice([0, 1, 9, 10, 13, 27, 32, 34, 44, 58, 59, 60, 62, 64, 127, 128, 255])))


# ---------------------------------------------------------------------------------------------------------------
# Processes.

class Proc:
    """A child we started, stopped by its own pid (process group of its own)."""

    def __init__(self, argv, log_prefix):
        self.out = open(f"{log_prefix}.out", "wb")
        self.err = open(f"{log_prefix}.err", "wb")
        self.log_prefix = log_prefix
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err,
                                  start_new_session=True)

    def alive(self):
        return self.p.poll() is None

    def rc(self):
        return self.p.poll()

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(3)
        self.out.close()
        self.err.close()

    def tail(self, n=600):
        out = b""
        for suf in (".err", ".out"):
            try:
                out += Path(self.log_prefix + suf).read_bytes()[-n:]
            except OSError:
                pass
        return out.decode("latin-1", "replace")


class Sipp(Proc):
    count = 0

    def __init__(self, work, sipp="/usr/bin/sipp", timeout_s=1200):
        Sipp.count += 1
        prefix = f"{work}/sipp-{Sipp.count}"
        super().__init__([sipp, "-sn", "uas", "-i", PBX_ADDR[0], "-p", str(PBX_ADDR[1]), "-t", "u1", "-nostdin",
                          "-trace_err", "-error_file", prefix + ".errors.log",
                          "-trace_msg", "-message_file", prefix + ".messages.log",
                          "-max_retrans", "2", "-timeout", f"{timeout_s}s", "-timeout_error"], prefix)
        self.prefix = prefix
        wait_port_ready(PBX_ADDR)

    def messages_log(self):
        try:
            return Path(self.prefix + ".messages.log").read_bytes()
        except OSError:
            return b""

    def describe_exit(self):
        rc = self.rc()
        if rc is None:
            return "alive"
        if rc < 0:
            return f"killed by signal {-rc} ({signal.Signals(-rc).name})"
        return f"exit code {rc}"


def wait_port_ready(addr, secs=3.0):
    """Wait until someone has bound this UDP address (read from /proc/net/udp, never by binding it ourselves)."""
    a = socket.inet_aton(addr[0])
    want = ("%02X%02X%02X%02X:%04X" % (a[3], a[2], a[1], a[0], addr[1]))
    end = time.time() + secs
    while time.time() < end:
        try:
            if want in Path("/proc/net/udp").read_text():
                return True
        except OSError:
            pass
        time.sleep(0.03)
    return False


def front_config(work, backend_uri):
    cfg = f"""[node]
id = 1
name = "oddreq"

[sip]
listen = ["udp:{FRONT_ADDR[0]}:{FRONT_ADDR[1]}"]
advertise = "{FRONT_ADDR[0]}"
max_transactions_per_source = 20000

[dialogs]
max_per_source = 100000

[health]
enabled = false

[security]
allow = ["127.0.0.0/8"]

[log]
level = "info"

[[backend]]
name = "pbx"
uri = "{backend_uri}"
"""
    p = Path(work) / "front.toml"
    p.write_text(cfg)
    return str(p)


class Front(Proc):
    count = 0

    def __init__(self, work, binary):
        Front.count += 1
        cfg = front_config(work, f"sip:{PBX_ADDR[0]}:{PBX_ADDR[1]};transport=udp")
        super().__init__([binary, "run", "--config", cfg], f"{work}/sipfront-{Front.count}")
        wait_port_ready(FRONT_ADDR)
        time.sleep(0.3)


# ---------------------------------------------------------------------------------------------------------------
# Sending.

class Client:
    def __init__(self):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind((LOCAL_IP, 0))
        self.local = f"{LOCAL_IP}:{self.s.getsockname()[1]}"
        self.n = 0

    def send(self, text, dest, proxy, pbx, cid=None, totag="none"):
        self.n += 1
        branch = f"z9hG4bK-odd{os.getpid()}x{self.n}b"
        cid = cid or f"odd{os.getpid()}x{self.n}z"   # 'z': no Call-ID is a prefix of another
        data = fill(text.replace("@TOTAG@", totag), proxy, pbx, self.local, branch, cid)
        self.s.sendto(data[:MAX_UDP], dest)
        return cid, data

    def drain(self, wait=0.0):
        got = []
        end = time.time() + wait
        while True:
            t = max(0.0, end - time.time())
            r, _, _ = select.select([self.s], [], [], t)
            if not r:
                return got
            got.append(self.s.recv(70000))

    def close(self):
        self.s.close()


def first_line(b):
    return b.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1", "replace")


def open_dialog(cli, dest, proxy, pbx, wait=1.0):
    """A valid INVITE; returns (call_id, to_tag) once its 200 arrives, else (call_id, None)."""
    cid, _ = cli.send(TEMPLATES["INVITE0"], dest, proxy, pbx)
    end = time.time() + wait
    while time.time() < end:
        for m in cli.drain(0.05):
            if m.startswith(b"SIP/2.0 200") and cid.encode() in m:
                for line in m.split(b"\r\n"):
                    if line.lower().startswith((b"to:", b"t:")) and b"tag=" in line:
                        return cid, line.split(b"tag=", 1)[1].split(b";")[0].strip().decode("latin-1")
    return cid, None


def send_case(cli, template, text, dest, proxy, pbx):
    """Send one (mutated) message; in-dialog templates first open the dialog they belong to."""
    if template in DIALOG:
        cid, tag = open_dialog(cli, dest, proxy, pbx)
        return cli.send(text, dest, proxy, pbx, cid=cid, totag=tag or "none")
    return cli.send(text, dest, proxy, pbx)


def probe_alive(sipp, cli):
    """A valid INVITE must get its 180 within 2 s (catches hangs); its call ends on SIPp's own timers."""
    cid, _ = cli.send(TEMPLATES["INVITE0"], PBX_ADDR, f"{PBX_ADDR[0]}:{PBX_ADDR[1]}",
                      f"{PBX_ADDR[0]}:{PBX_ADDR[1]}")
    end = time.time() + 2.0
    while time.time() < end:
        for m in cli.drain(0.1):
            if cid.encode() in m and (m.startswith(b"SIP/2.0 180") or m.startswith(b"SIP/2.0 200")):
                return True
        if not sipp.alive():
            return False
    return False


# ---------------------------------------------------------------------------------------------------------------
# Fuzz mode.

def run_one_direct(work, case_text, settle=1.0, reuse=None, template=None):
    """Send one message to a fresh (or the given) SIPp. Returns (crashed_or_hung, description, sipp)."""
    sipp = reuse or Sipp(work)
    cli = Client()
    try:
        pbx = f"{PBX_ADDR[0]}:{PBX_ADDR[1]}"
        send_case(cli, template, case_text, PBX_ADDR, pbx, pbx)
        end = time.time() + settle
        while time.time() < end and sipp.alive():
            cli.drain(0.05)
        if sipp.alive():
            ok = probe_alive(sipp, cli)
            if ok:
                return False, "fine", sipp
            if sipp.alive():
                return True, "hang (no 180 to a valid INVITE within 2 s)", sipp
        return True, sipp.describe_exit(), sipp
    finally:
        cli.close()


def shrink_value(v, still_crashes):
    """Bisect the length of a long repeated payload down to the smallest length that still crashes."""
    if len(v) < 64 or len(set(v)) > 8:
        return v
    lo, hi = 1, len(v)
    c = v[0]
    # Shorten the run of the most common character only.
    while lo < hi and hi - lo > max(4, hi // 200):
        mid = (lo + hi) // 2
        if still_crashes(c * mid):
            hi = mid
        else:
            lo = mid + 1
    return c * hi


def minimise(work, template, ops, budget_s=60):
    """Drop ops one at a time, then shorten long payloads; a fresh SIPp per trial. Bounded by budget_s."""
    t0 = time.time()

    def crashes(o):
        if time.time() - t0 > budget_s:
            return False
        sipp = None
        try:
            crashed, _, sipp = run_one_direct(work, build(template, o), template=template)
            return crashed
        finally:
            if sipp:
                sipp.stop()

    ops = list(ops)
    i = 0
    while i < len(ops) and len(ops) > 1:
        trial = ops[:i] + ops[i + 1:]
        if crashes(trial):
            ops = trial
        else:
            i += 1
    for j, op in enumerate(ops):
        if op[0] in ("set", "add") and len(op[2]) >= 64:
            def still(v, j=j, op=op):
                o = list(ops)
                o[j] = (op[0], op[1], v) + tuple(op[3:])
                return crashes(o)
            nv = shrink_value(op[2], still)
            ops[j] = (op[0], op[1], nv) + tuple(op[3:])
        if op[0] in ("method", "startmethod") and len(op[1]) >= 64:
            def still(v, j=j, op=op):
                o = list(ops)
                o[j] = (op[0], v)
                return crashes(o)
            ops[j] = (op[0], shrink_value(op[1], still))
        if op[0] == "ruri" and len(op[1]) >= 200:
            pre, _, post = op[1].partition("aaaa")
            run = op[1][len(pre):].split("@", 1)[0]
            rest = op[1][len(pre) + len(run):]

            def still(v, j=j):
                o = list(ops)
                o[j] = ("ruri", pre + v + rest)
                return crashes(o)
            ops[j] = ("ruri", pre + shrink_value(run, still) + rest)
    return ops


def known_class(op):
    """Mutations of the classes already found (see README): a method of 64+ characters, a header value over
    ~20 KB, hundreds of Via lines. --skip-known leaves them out to look for other crashes."""
    if op[0] in ("method", "startmethod"):
        return len(op[1]) >= 64
    if op[0] == "fill":
        return op[2] == "Via" and op[1] >= 300 or op[1] * 12 >= 20000
    return any(isinstance(x, str) and len(x) >= 20000 for x in op[1:])


def signature(desc, ops):
    kinds = sorted({(o[0], o[1] if o[0] in ("set", "add", "rawline", "fold", "del", "bytes") else "") for o in ops})
    return desc.split(" (")[0] + " | " + ";".join(f"{k}:{h}" for k, h in kinds)


def fuzz(args):
    work = args.work
    os.makedirs(work, exist_ok=True)
    rng = random.Random(args.seed)
    t_end = time.time() + args.max_seconds
    results = {"sent": 0, "crashes": [], "hangs": 0, "restarts": 0, "seed": args.seed}
    sipp = Sipp(work)
    cli = Client()
    recent = []
    seen_sigs = set()
    pbx = f"{PBX_ADDR[0]}:{PBX_ADDR[1]}"
    try:
        while results["sent"] < args.max_messages and time.time() < t_end:
            template = rng.choice(list(TEMPLATES))
            ops = [random_op(rng, template) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
            if args.skip_known and any(known_class(o) for o in ops):
                continue
            try:
                text = build(template, ops)
            except (ValueError, IndexError):
                continue
            send_case(cli, template, text, PBX_ADDR, pbx, pbx)
            results["sent"] += 1
            recent.append((template, ops))
            recent = recent[-args.window:]
            cli.drain(args.gap)
            dead = not sipp.alive()
            hung = False
            if not dead and results["sent"] % args.probe_every == 0:
                hung = not probe_alive(sipp, cli)
            if not (dead or hung):
                continue
            # Something in the window killed (or froze) SIPp: replay each one alone to find which.
            exit_desc = sipp.describe_exit() if dead else "hang"
            results["hangs"] += int(hung)
            results["restarts"] += 1
            sys.stderr.write(f"[{results['sent']}] SIPp {exit_desc}; replaying the last {len(recent)}\n")
            tail = sipp.tail()
            sipp.stop()
            found = False
            for tpl, o in reversed(recent):
                if time.time() > t_end + args.grace:
                    break
                crashed, desc, s2 = run_one_direct(work, build(tpl, o), template=tpl)
                s2.stop()
                if not crashed:
                    continue
                found = True
                sig = signature(desc, o)
                entry = {"template": tpl, "ops": o, "effect": desc, "sipp_tail": tail[-400:], "signature": sig}
                if sig not in seen_sigs and len(seen_sigs) < args.max_minimise:
                    seen_sigs.add(sig)
                    budget = min(60.0, t_end + args.grace - time.time())
                    entry["minimal_ops"] = minimise(work, tpl, o, budget_s=max(0.0, budget))
                    _, mdesc, s3 = run_one_direct(work, build(tpl, entry["minimal_ops"]), template=tpl)
                    s3.stop()
                    entry["minimal_effect"] = mdesc
                    entry["minimal_text"] = build(tpl, entry["minimal_ops"])
                results["crashes"].append(entry)
                sys.stderr.write(f"    crasher: {tpl} {json.dumps(o)[:300]} -> {desc}\n")
                break
            if not found:
                results["crashes"].append({"unattributed": True, "effect": exit_desc, "sipp_tail": tail[-400:],
                                           "window": [(t, o) for t, o in recent]})
            recent = []
            sipp = Sipp(work)
    finally:
        cli.close()
        sipp.stop()
        out = Path(work) / "fuzz-results.json"
        out.write_text(json.dumps(results, indent=1, ensure_ascii=True))
        print(f"sent {results['sent']} messages, {len(results['crashes'])} crashes/hangs, "
              f"{len(seen_sigs)} distinct signatures; results in {out}")


# ---------------------------------------------------------------------------------------------------------------
# Corpus modes.

def corpus(args):
    files = sorted(Path(args.corpus).glob("*.sip"))
    return [(f.name, f.read_bytes().decode("latin-1")) for f in files]


class CapturePbx:
    """A UDP 'PBX' that records what sipfront forwards and answers each request 486 (ACKs are not answered), so
    sipfront's passive health check never marks it down."""

    def __init__(self):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind(PBX_ADDR)

    def drain(self, wait):
        got = []
        end = time.time() + wait
        while True:
            r, _, _ = select.select([self.s], [], [], max(0.0, end - time.time()))
            if not r:
                return got
            m, src = self.s.recvfrom(70000)
            got.append(m)
            if not m.startswith(b"SIP/2.0") and not m.startswith(b"ACK "):
                self.answer(m, src)

    def answer(self, m, src):
        head = m.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        keep = [l for l in head[1:] if l.split(b":", 1)[0].strip().lower() in
                (b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq")]
        to = [l for l in head[1:] if l.split(b":", 1)[0].strip().lower() in (b"to", b"t")]
        to = [to[0] + (b";tag=capture" if b"tag=" not in to[0] else b"")] if to else []
        resp = b"\r\n".join([b"SIP/2.0 486 Busy Here"] + keep + to + [b"Content-Length: 0", b"", b""])
        self.s.sendto(resp, src)

    def close(self):
        self.s.close()


def headers_kept(sent, forwarded):
    """Every header line we sent is in the forwarded copy, byte for byte, except Via (sipfront adds received and
    rport to ours) and Max-Forwards (rewritten, decremented). Bare LF is compared as CRLF."""
    def lines(m):
        head = m.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in m else m.split(b"\n\n", 1)[0]
        head = head.replace(b"\r\n", b"\n").split(b"\n")[1:]
        return [l for l in head if l.split(b":", 1)[0].strip().lower() not in (b"via", b"v", b"max-forwards")]
    have = lines(forwarded)
    return all(l in have for l in lines(sent))


def forward(args):
    work = args.work
    os.makedirs(work, exist_ok=True)
    pbx = CapturePbx()
    front = Front(work, args.sipfront)
    cli = Client()
    rows = []
    try:
        for name, text in corpus(args):
            pbx.drain(0.05)
            cli.drain(0.0)
            cid, sent = cli.send(text, FRONT_ADDR, f"{FRONT_ADDR[0]}:{FRONT_ADDR[1]}",
                                 f"{PBX_ADDR[0]}:{PBX_ADDR[1]}")
            fwd = [m for m in pbx.drain(0.5) if cid.encode() in m and not m.startswith(b"ACK ")]
            answers = sorted({first_line(m) for m in cli.drain(0.2) if cid.encode() in m})
            row = {"file": name, "forwarded": bool(fwd), "answers": answers,
                   "forwarded_start": first_line(fwd[0]) if fwd else None,
                   "headers_kept": headers_kept(sent, fwd[0]) if fwd else None,
                   "sipfront_alive": front.alive()}
            if fwd:
                Path(work, "forwarded-" + name).write_bytes(fwd[0])
            rows.append(row)
            kept = "" if not fwd else " headers kept byte for byte" if row["headers_kept"] else " HEADERS CHANGED"
            print(f"{name:40s} forwarded={'yes' if fwd else 'no ':3s}{kept} answers={answers}")
    finally:
        cli.close()
        front.stop()
        pbx.close()
    Path(work, "forward-results.json").write_text(json.dumps(rows, indent=1))


def e2e(args, through_front=True):
    work = args.work
    os.makedirs(work, exist_ok=True)
    rows = []
    front = None
    try:
        for name, text in corpus(args):
            # A fresh sipfront per case: it retransmits a request the dead SIPp never answered (non-INVITE: for
            # 32 s), and that retransmission would kill the next case's SIPp.
            if through_front:
                front = Front(work, args.sipfront)
            sipp = Sipp(work)
            cli = Client()
            try:
                dest = FRONT_ADDR if through_front else PBX_ADDR
                proxy = f"{dest[0]}:{dest[1]}"
                cid, _ = cli.send(text, dest, proxy, f"{PBX_ADDR[0]}:{PBX_ADDR[1]}")
                end = time.time() + args.settle
                answers = []
                while time.time() < end and sipp.alive():
                    answers += [first_line(m) for m in cli.drain(0.05)]
                received = cid.encode() in sipp.messages_log() or not sipp.alive()
                if not sipp.alive():
                    effect = sipp.describe_exit()
                elif probe_alive(sipp, cli):
                    effect = "fine"
                elif sipp.alive():
                    effect = "hang (no 180 to a valid INVITE within 2 s)"
                else:   # memory corrupted by the odd message, the crash comes with the next one
                    effect = sipp.describe_exit() + " on the next (valid) INVITE"
                tail = sipp.tail(300) if not sipp.alive() else ""
            finally:
                cli.close()
                sipp.stop()
            row = {"file": name, "sipp_effect": effect, "answers": answers[:4], "sipp_got_it": received,
                   "sipfront_alive": front.alive() if front else None, "sipp_tail": tail}
            if front:
                front.stop()
                front = None
            rows.append(row)
            print(f"{name:40s} sipp={effect:40s} sipp_got_it={received} answers={answers[:3]}")
            if tail:
                print("      sipp said: " + " ".join(tail.split())[-200:])
    finally:
        if front:
            front.stop()
    Path(work, ("e2e" if through_front else "direct") + "-results.json").write_text(json.dumps(rows, indent=1))


def main():
    global FRONT_ADDR, PBX_ADDR
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["fuzz", "forward", "e2e", "direct"])
    ap.add_argument("--work", default="/tmp/oddreq")
    ap.add_argument("--sipfront", default="/tmp/sipfront-old-release")
    ap.add_argument("--corpus", default=str(HERE))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-messages", type=int, default=20000)
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--gap", type=float, default=0.01, help="seconds to wait after each fuzz message")
    ap.add_argument("--window", type=int, default=30, help="messages replayed to attribute a crash")
    ap.add_argument("--probe-every", type=int, default=100, help="hang probe interval (messages)")
    ap.add_argument("--max-minimise", type=int, default=25, help="distinct crash signatures to minimise")
    ap.add_argument("--skip-known", action="store_true", help="leave out the mutation classes already found")
    ap.add_argument("--grace", type=float, default=180,
                    help="seconds past --max-seconds allowed to finish replaying/minimising the last crash")
    ap.add_argument("--settle", type=float, default=0.6, help="seconds to watch SIPp after a corpus message")
    ap.add_argument("--front", default="%s:%d" % FRONT_ADDR, help="sipfront's UDP listener (loopback)")
    ap.add_argument("--pbx", default="%s:%d" % PBX_ADDR, help="the PBX: SIPp or the capture socket (loopback)")
    args = ap.parse_args()
    for name in ("front", "pbx"):
        host, port = getattr(args, name).rsplit(":", 1)
        if not host.startswith("127."):
            ap.error("loopback addresses only")
        if name == "front":
            FRONT_ADDR = (host, int(port))
        else:
            PBX_ADDR = (host, int(port))
    if args.mode == "fuzz":
        fuzz(args)
    elif args.mode == "forward":
        forward(args)
    elif args.mode == "e2e":
        e2e(args, True)
    else:
        e2e(args, False)


if __name__ == "__main__":
    main()
