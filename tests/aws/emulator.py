#!/usr/bin/env python3
"""EC2 emulator for sipfront's tests: moto's EC2 server plus a fault-injecting proxy.

Usage:
    python3 tests/aws/emulator.py --host 127.0.0.1 [--port 0] [--moto-port 0]

Starts, in one process, moto's server (in-process, on an ephemeral port) and an
HTTP/1.1 keep-alive proxy in front of it. When both listen, exactly one line is
printed to stdout:

    {"ec2": "http://127.0.0.1:P1", "moto": "http://127.0.0.1:P2"}

Point the AWS SDK's endpoint_url at "ec2". Every EC2 call is forwarded to moto
unless a fault rule or a realism fix says otherwise. The control API lives on the
proxy under /_emu/ (see tests/aws/README.md). One log line per proxied call goes
to stderr. SIGTERM / SIGINT exit cleanly (status 0).
"""

import argparse
import fnmatch
import http.client
import http.server
import json
import logging
import os
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15"
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding",
    "upgrade", "expect", "content-length",
}
KEY_PARAMS = (
    "VolumeId", "InstanceId", "NetworkInterfaceId", "AllocationId",
    "RouteTableId", "AssociationId", "PrivateIpAddress", "Device",
    "DestinationCidrBlock",
)
FAULT_KINDS = {
    "throttle", "server_error", "unavailable", "delay", "apply_then_error",
    "hang", "reset", "error",
}
CANNED_ERRORS = {
    "throttle": (503, "RequestLimitExceeded", "Request limit exceeded."),
    "server_error": (500, "InternalError",
                     "An internal error has occurred. Please try again later."),
    "unavailable": (503, "Unavailable",
                    "The service is unavailable. Please try again shortly."),
    "apply_then_error": (500, "InternalError",
                         "An internal error has occurred. Please try again later."),
}
REALISM_DEFAULTS = {
    "attach_polls": 0,
    "detach_polls": 0,
    "refuse_attach_in_use": False,
    # AWS accepts DetachVolume without InstanceId, moto crashes (500): fill it in.
    "detach_fill_instance_id": True,
    # moto ignores AllowReassignment: the address stays on the old ENI too.
    "ip_reassignment": False,
    # moto's addresses.private-ip-address filter only looks at the primary IP.
    "eni_address_filter": False,
}
HANG_MAX_S = 120.0
WARMUP_HEADERS = [("Authorization", "AWS4-HMAC-SHA256 Credential=testing/20240101/"
                   "us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0")]


def log(msg):
    try:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
    except Exception:
        pass


def error_xml(code, message):
    """EC2 query-protocol error body, as AWS sends it (no namespace)."""
    rid = str(uuid.uuid4())
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{xml_escape(code)}</Code><Message>{xml_escape(message)}</Message>"
            f"</Error></Errors><RequestID>{rid}</RequestID></Response>")
    return body.encode(), rid


def xml_escape(s):
    return (str(s).replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;").replace('"', "&quot;"))


def flat_params(qs_pairs):
    out = {}
    for k, v in qs_pairs:
        out.setdefault(k, v)
    return out


def key_params(params):
    parts = []
    for k in KEY_PARAMS:
        vals = [v for n, v in params.items() if n == k or n.startswith(k + ".")]
        if vals:
            parts.append(f"{k}={','.join(vals)}")
    return " ".join(parts)


class Rule:
    _next_id = 1

    def __init__(self, d):
        if not isinstance(d, dict):
            raise ValueError("rule must be an object")
        self.kind = d.get("kind")
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; one of {sorted(FAULT_KINDS)}")
        self.action = str(d.get("action", "*"))
        self.count = int(d.get("count", 1))
        self.after = int(d.get("after", 0))
        self.delay_ms = int(d.get("delay_ms", 0))
        self.max_ms = int(d.get("max_ms", HANG_MAX_S * 1000))
        self.status = int(d.get("status", 400))
        self.code = str(d.get("code", "InvalidParameterValue"))
        self.message = str(d.get("message", "Injected error."))
        if self.kind == "error" and "code" not in d:
            raise ValueError("kind 'error' needs 'code' (and optional 'status', 'message')")
        self.id = Rule._next_id
        Rule._next_id += 1

    def matches(self, action):
        return self.action == "*" or self.action == action

    def to_json(self):
        d = {"id": self.id, "action": self.action, "kind": self.kind,
             "count": self.count, "after": self.after, "delay_ms": self.delay_ms}
        if self.kind == "hang":
            d["max_ms"] = self.max_ms
        if self.kind == "error":
            d.update(status=self.status, code=self.code, message=self.message)
        return d


class State:
    def __init__(self, moto_host, moto_port):
        self.moto_host = moto_host
        self.moto_port = moto_port
        self.lock = threading.RLock()
        self.rules = []
        self.calls = []
        self.seq = 0
        self.realism = dict(REALISM_DEFAULTS)
        self.attaching = {}   # volume id -> polls left showing "attaching"
        self.detaching = {}   # volume id -> {"instanceId", "device", "attachTime", "left"}
        self.running = threading.Event()
        self.running.set()    # cleared while paused

    # -- faults ---------------------------------------------------------
    def pick_fault(self, action):
        """Every matching rule counts the call against its `after`; the first
        rule past its `after` with count left fires and is consumed."""
        with self.lock:
            chosen = None
            for r in self.rules:
                if not r.matches(action):
                    continue
                if r.after > 0:
                    r.after -= 1
                    continue
                if chosen is None and r.count != 0:
                    chosen = r
                    if r.count > 0:
                        r.count -= 1
            self.rules = [r for r in self.rules if r.count != 0]
            return chosen

    def reset_realism_state(self):
        with self.lock:
            self.realism = dict(REALISM_DEFAULTS)
            self.attaching.clear()
            self.detaching.clear()

    # -- upstream -------------------------------------------------------
    def upstream(self, method, path, headers, body, timeout=60):
        conn = http.client.HTTPConnection(self.moto_host, self.moto_port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            has_host = False
            for k, v in headers:
                if k.lower() in HOP_BY_HOP:
                    continue
                if k.lower() == "host":
                    has_host = True
                conn.putheader(k, v)
            if not has_host:
                conn.putheader("Host", f"{self.moto_host}:{self.moto_port}")
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            hdrs = [(k, v) for k, v in resp.getheaders()
                    if k.lower() not in HOP_BY_HOP and k.lower() not in ("server", "date", "status")]
            return resp.status, hdrs, data
        finally:
            conn.close()

    def ec2_call(self, headers, params):
        """An internal EC2 query call to moto, reusing the client's signing headers
        (moto takes the region from the Authorization credential scope)."""
        p = {"Version": "2016-11-15"}
        p.update(params)
        body = urllib.parse.urlencode(p).encode()
        hdrs = [(k, v) for k, v in headers
                if k.lower() in ("host", "authorization", "x-amz-date", "user-agent")]
        hdrs.append(("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"))
        status, _, data = self.upstream("POST", "/", hdrs, body)
        return status, data

    def describe_volume(self, headers, vol):
        """-> (exists, attachment dict or None)"""
        status, data = self.ec2_call(headers, {"Action": "DescribeVolumes", "VolumeId.1": vol})
        if status != 200:
            return False, None
        root = ET.fromstring(data)
        for item in iter_children(root, "volumeSet", "item"):
            if text(item, "volumeId") != vol:
                continue
            for att in iter_children(item, "attachmentSet", "item"):
                return True, {"instanceId": text(att, "instanceId"),
                              "device": text(att, "device"),
                              "attachTime": text(att, "attachTime"),
                              "status": text(att, "status")}
            return True, None
        return False, None

    def all_enis(self, headers):
        status, data = self.ec2_call(headers, {"Action": "DescribeNetworkInterfaces"})
        if status != 200:
            return []
        out = []
        root = ET.fromstring(data)
        for item in iter_children(root, "networkInterfaceSet", "item"):
            ips = [(text(a, "privateIpAddress"), text(a, "primary") == "true")
                   for a in iter_children(item, "privateIpAddressesSet", "item")]
            out.append((text(item, "networkInterfaceId"), ips))
        return out


# -- XML helpers (namespace-agnostic) -------------------------------------
def local(tag):
    return tag.rsplit("}", 1)[-1]


def ns_of(elem):
    return elem.tag[1:].split("}", 1)[0] if elem.tag.startswith("{") else ""


def child(elem, name):
    for c in elem:
        if local(c.tag) == name:
            return c
    return None


def text(elem, name):
    c = child(elem, name)
    return c.text if c is not None else None


def iter_children(root, set_name, item_name):
    s = child(root, set_name)
    if s is None:
        return []
    return [c for c in s if local(c.tag) == item_name]


def serialize(root):
    ns = ns_of(root)
    if ns:
        ET.register_namespace("", ns)
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n'
            + ET.tostring(root, encoding="utf-8", xml_declaration=False))


def sub(parent, ns, name, value=None):
    e = ET.SubElement(parent, f"{{{ns}}}{name}" if ns else name)
    if value is not None:
        e.text = value
    return e


def form_params(body_bytes, query):
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    try:
        pairs += urllib.parse.parse_qsl(body_bytes.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        pass
    return pairs


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sipfront-ec2-emulator/1"
    sys_version = ""
    state: State = None  # set on the class by main()

    def log_message(self, fmt, *args):  # silence default access log
        pass

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    # -- plumbing -------------------------------------------------------
    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def send(self, status, body, headers=(), content_type=None):
        self.send_response(status)
        seen = set()
        for k, v in headers:
            seen.add(k.lower())
            self.send_header(k, v)
        if content_type and "content-type" not in seen:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        # headers + body in one write (no Nagle / delayed-ACK stalls)
        if self.command != "HEAD":
            self._headers_buffer.append(b"\r\n")
            self._headers_buffer.append(body)
            self.wfile.write(b"".join(self._headers_buffer))
            self._headers_buffer = []
        else:
            self.end_headers()
        self.wfile.flush()

    def send_json(self, status, obj):
        self.send(status, json.dumps(obj).encode(), content_type="application/json")

    def send_ec2_error(self, status, code, message):
        body, rid = error_xml(code, message)
        self.send(status, body, [("Content-Type", "text/xml;charset=UTF-8"),
                                 ("x-amzn-RequestId", rid)])

    def client_gone(self):
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if r:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True
        return False

    def abort_connection(self):
        """Close with RST, no answer."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    # -- entry points ---------------------------------------------------
    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_HEAD(self):
        self.dispatch()

    def dispatch(self):
        try:
            body = self.read_body()
        except Exception as e:
            log(f"emulator: bad request body: {e}")
            self.close_connection = True
            return
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/_emu/") or path == "/_emu":
            try:
                self.control(path, body)
            except BrokenPipeError:
                self.close_connection = True
            except Exception as e:  # noqa
                self.send_json(500, {"error": repr(e)})
            return
        self.proxy(body)

    # -- control API ----------------------------------------------------
    def control(self, path, body):
        st = self.state
        m = self.command
        try:
            req = json.loads(body) if body.strip() else {}
        except ValueError as e:
            return self.send_json(400, {"error": f"bad json: {e}"})
        if path == "/_emu/faults":
            if m == "GET":
                with st.lock:
                    return self.send_json(200, {"rules": [r.to_json() for r in st.rules]})
            if m == "DELETE":
                with st.lock:
                    st.rules.clear()
                return self.send_json(200, {"rules": []})
            if m == "POST":
                rules = req.get("rules") if isinstance(req, dict) else req
                if isinstance(rules, dict):
                    rules = [rules]
                try:
                    new = [Rule(r) for r in (rules or [])]
                except (ValueError, TypeError) as e:
                    return self.send_json(400, {"error": str(e)})
                with st.lock:
                    st.rules.extend(r for r in new if r.count != 0)
                    return self.send_json(200, {"rules": [r.to_json() for r in st.rules]})
        elif path == "/_emu/calls":
            if m == "GET":
                with st.lock:
                    return self.send_json(200, list(st.calls))
            if m == "DELETE":
                with st.lock:
                    st.calls.clear()
                return self.send_json(200, [])
        elif path == "/_emu/realism":
            if m == "GET":
                with st.lock:
                    return self.send_json(200, dict(st.realism))
            if m == "POST":
                if not isinstance(req, dict):
                    return self.send_json(400, {"error": "expected an object"})
                unknown = set(req) - set(REALISM_DEFAULTS)
                if unknown:
                    return self.send_json(400, {"error": f"unknown keys {sorted(unknown)}"})
                with st.lock:
                    for k, v in req.items():
                        st.realism[k] = type(REALISM_DEFAULTS[k])(v)
                    return self.send_json(200, dict(st.realism))
            if m == "DELETE":
                st.reset_realism_state()
                return self.send_json(200, dict(st.realism))
        elif path == "/_emu/pause" and m == "POST":
            st.running.clear()
            log("emulator: paused")
            return self.send_json(200, {"paused": True})
        elif path == "/_emu/resume" and m == "POST":
            st.running.set()
            log("emulator: resumed")
            return self.send_json(200, {"paused": False})
        elif path == "/_emu/reset" and m == "POST":
            with st.lock:
                st.rules.clear()
                st.calls.clear()
            st.reset_realism_state()
            status, _, data = st.upstream("POST", "/moto-api/reset", [], b"")
            st.running.set()
            log(f"emulator: reset (moto {status})")
            return self.send_json(200 if status == 200 else 502,
                                  {"reset": status == 200, "moto_status": status})
        elif path == "/_emu/health" and m == "GET":
            return self.send_json(200, {"ok": True, "paused": not st.running.is_set()})
        self.send_json(404, {"error": f"no such control endpoint: {m} {path}"})

    # -- proxy ------------------------------------------------------------
    def proxy(self, body):
        st = self.state
        t0 = time.monotonic()
        split = urllib.parse.urlsplit(self.path)
        pairs = form_params(body, split.query)
        params = flat_params(pairs)
        action = params.get("Action", "?")
        logged = {k: v for k, v in params.items() if k not in ("Action", "Version")}
        entry = {"seq": 0, "action": action, "params": logged, "status": None,
                 "fault": None, "ms": None, "t": time.time()}
        with st.lock:
            st.seq += 1
            entry["seq"] = st.seq
            st.calls.append(entry)

        # Paused: hold the call (not answered) until resumed.
        paused = False
        while not st.running.wait(0.05):
            paused = True
        if paused:
            entry["paused_ms"] = round((time.monotonic() - t0) * 1000, 1)

        rule = st.pick_fault(action)
        fault = rule.kind if rule else None
        entry["fault"] = fault
        status = None
        note = ""
        try:
            if rule and rule.delay_ms > 0:
                time.sleep(rule.delay_ms / 1000.0)
            if fault in ("throttle", "server_error", "unavailable"):
                status, code, msg = CANNED_ERRORS[fault]
                self.send_ec2_error(status, code, msg)
            elif fault == "error":
                status = rule.status
                self.send_ec2_error(rule.status, rule.code, rule.message)
            elif fault == "hang":
                deadline = time.monotonic() + rule.max_ms / 1000.0
                while time.monotonic() < deadline and not self.client_gone():
                    time.sleep(0.05)
                note = " (client gone)" if time.monotonic() < deadline else " (max reached)"
                self.abort_connection()
            elif fault == "reset":
                self.abort_connection()
            else:
                status, hdrs, data, note = self.forward(action, params, pairs, split, body)
                if fault == "apply_then_error":
                    note += f" (upstream {status})"
                    status, code, msg = CANNED_ERRORS[fault]
                    self.send_ec2_error(status, code, msg)
                else:
                    self.send(status, data, hdrs)
        except (BrokenPipeError, ConnectionResetError) as e:
            note += f" (client: {e.__class__.__name__})"
            self.close_connection = True
        finally:
            ms = round((time.monotonic() - t0) * 1000, 1)
            entry["status"] = status
            entry["ms"] = ms
            log(f"ec2 {action} {key_params(params)} status={status if status else '-'} "
                f"fault={fault or '-'} ms={ms}{note}")

    def forward(self, action, params, pairs, split, body):
        """Forward to moto with the realism fixes. -> (status, headers, body, note)"""
        st = self.state
        headers = list(self.headers.items())
        with st.lock:
            real = dict(st.realism)
        note = ""
        post = None

        if action == "AttachVolume":
            vol = params.get("VolumeId")
            with st.lock:
                in_detaching = vol in st.detaching
            if real["refuse_attach_in_use"] and vol:
                if in_detaching:
                    return self.canned(400, "IncorrectState", f"{vol} is not 'available'.")
                exists, att = st.describe_volume(headers, vol)
                if att is not None:
                    return self.canned(400, "VolumeInUse",
                                       f"{vol} is already attached to an instance")
            elif in_detaching:
                with st.lock:
                    st.detaching.pop(vol, None)

            def post(status, root):
                if status != 200 or not vol:
                    return False
                with st.lock:
                    st.detaching.pop(vol, None)
                    if real["attach_polls"] > 0:
                        st.attaching[vol] = real["attach_polls"]
                    else:
                        st.attaching.pop(vol, None)
                if real["attach_polls"] > 0 and root is not None:
                    c = child(root, "status")
                    if c is not None and c.text != "attaching":
                        c.text = "attaching"
                        return True
                return False

        elif action == "DetachVolume":
            vol = params.get("VolumeId")
            att = None
            # A forced detach ends an emulated (stuck) detachment at once, as Force does on AWS.
            if vol and params.get("Force", "false").lower() == "true":
                with st.lock:
                    stuck = st.detaching.pop(vol, None)
                if stuck is not None:
                    rid = str(uuid.uuid4())
                    body = (
                        '<?xml version="1.0" encoding="UTF-8"?>\n'
                        '<DetachVolumeResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                        f'<requestId>{rid}</requestId><volumeId>{vol}</volumeId>'
                        f'<instanceId>{stuck.get("instanceId", "")}</instanceId>'
                        f'<device>{stuck.get("device", "")}</device><status>detaching</status>'
                        '</DetachVolumeResponse>').encode()
                    return (200, [("Content-Type", "text/xml;charset=UTF-8"), ("x-amzn-RequestId", rid)],
                            body, " (emulated forced detach)")
            if vol and (real["detach_fill_instance_id"] or real["detach_polls"] > 0):
                exists, att = st.describe_volume(headers, vol)
                if exists and att is None and "InstanceId" not in params:
                    return self.canned(400, "IncorrectState",
                                       f"Volume '{vol}' is in the 'available' state.")
                if att and "InstanceId" not in params and real["detach_fill_instance_id"]:
                    pairs = pairs + [("InstanceId", att["instanceId"])]
                    body = urllib.parse.urlencode(pairs).encode()
                    split = split._replace(query="")
                    note += f" (filled InstanceId={att['instanceId']})"

            def post(status, root):
                if status != 200 or not vol:
                    return False
                with st.lock:
                    st.attaching.pop(vol, None)
                    if real["detach_polls"] > 0 and att:
                        st.detaching[vol] = dict(att, left=real["detach_polls"])
                return False

        elif action == "DescribeVolumes":
            def post(status, root):
                if status != 200 or root is None:
                    return False
                return self.rewrite_volumes(root)

        elif action == "AssignPrivateIpAddresses" and real["ip_reassignment"]:
            eni = params.get("NetworkInterfaceId")
            ips = [v for k, v in pairs if re.fullmatch(r"PrivateIpAddress\.\d+", k)]
            allow = params.get("AllowReassignment", "false").lower() == "true"
            if eni and ips:
                holders = [(e, ip) for e, eips in st.all_enis(headers) if e != eni
                           for ip, primary in eips if ip in ips]
                if holders and not allow:
                    return self.canned(400, "PrivateIpAddressInUse",
                                       "Some of the specified addresses are already "
                                       "assigned to another interface.")
                for other, ip in holders:
                    s, _ = st.ec2_call(headers, {"Action": "UnassignPrivateIpAddresses",
                                                 "NetworkInterfaceId": other,
                                                 "PrivateIpAddress.1": ip})
                    note += f" (moved {ip} from {other}: {s})"

        elif action == "DescribeNetworkInterfaces" and real["eni_address_filter"]:
            keep, wanted = [], None
            filters = {}
            for k, v in pairs:
                m = re.fullmatch(r"Filter\.(\d+)\.(Name|Value\.\d+)", k)
                if m:
                    filters.setdefault(m.group(1), {"name": None, "values": []})
                    if m.group(2) == "Name":
                        filters[m.group(1)]["name"] = v
                    else:
                        filters[m.group(1)]["values"].append(v)
            drop = {n for n, f in filters.items() if f["name"] == "addresses.private-ip-address"}
            if drop:
                wanted = [v for n in drop for v in filters[n]["values"]]
                renum, i = {}, 1
                for n in sorted(filters, key=int):
                    if n not in drop:
                        renum[n] = str(i)
                        i += 1
                for k, v in pairs:
                    m = re.fullmatch(r"Filter\.(\d+)\.(.*)", k)
                    if m:
                        if m.group(1) in drop:
                            continue
                        k = f"Filter.{renum[m.group(1)]}.{m.group(2)}"
                    keep.append((k, v))
                pairs = keep
                body = urllib.parse.urlencode(pairs).encode()
                split = split._replace(query="")
                note += " (address filter emulated)"

                def post(status, root):
                    if status != 200 or root is None:
                        return False
                    s = child(root, "networkInterfaceSet")
                    if s is None:
                        return False
                    for item in list(s):
                        ips = [text(a, "privateIpAddress")
                               for a in iter_children(item, "privateIpAddressesSet", "item")]
                        if not any(fnmatch.fnmatchcase(ip or "", w) for ip in ips for w in wanted):
                            s.remove(item)
                    return True

        path = urllib.parse.urlunsplit(("", "", split.path or "/", split.query, ""))
        try:
            status, hdrs, data = st.upstream(self.command, path, headers, body)
        except OSError as e:
            note += f" (upstream failed: {e})"
            b, rid = error_xml("InternalError", "emulator: moto unreachable")
            return 500, [("Content-Type", "text/xml;charset=UTF-8")], b, note
        if post is not None:
            root = None
            if status == 200:
                try:
                    root = ET.fromstring(data)
                except ET.ParseError:
                    root = None
            if post(status, root) and root is not None:
                data = serialize(root)
                note += " (rewritten)"
        return status, hdrs, data, note

    def canned(self, status, code, message):
        body, rid = error_xml(code, message)
        return (status, [("Content-Type", "text/xml;charset=UTF-8"), ("x-amzn-RequestId", rid)],
                body, f" (emulated {code})")

    def rewrite_volumes(self, root):
        st = self.state
        ns = ns_of(root)
        changed = False
        with st.lock:
            for item in iter_children(root, "volumeSet", "item"):
                vol = text(item, "volumeId")
                if st.attaching.get(vol, 0) > 0:
                    for att in iter_children(item, "attachmentSet", "item"):
                        c = child(att, "status")
                        if c is not None and c.text == "attached":
                            c.text = "attaching"
                            changed = True
                    st.attaching[vol] -= 1
                    if st.attaching[vol] <= 0:
                        del st.attaching[vol]
                elif vol in st.detaching:
                    d = st.detaching[vol]
                    aset = child(item, "attachmentSet")
                    if aset is None:
                        aset = sub(item, ns, "attachmentSet")
                    if not list(aset):
                        a = sub(aset, ns, "item")
                        sub(a, ns, "volumeId", vol)
                        sub(a, ns, "instanceId", d["instanceId"])
                        sub(a, ns, "device", d["device"])
                        sub(a, ns, "status", "detaching")
                        sub(a, ns, "attachTime", d["attachTime"])
                        sub(a, ns, "deleteOnTermination", "false")
                        c = child(item, "status")
                        if c is not None:
                            c.text = "in-use"
                        changed = True
                    d["left"] -= 1
                    if d["left"] <= 0:
                        del st.detaching[vol]
        return changed


class ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, BrokenPipeError, OSError)):
            return
        super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="proxy port (0 = ephemeral)")
    ap.add_argument("--moto-port", type=int, default=0, help="moto port (0 = ephemeral)")
    ap.add_argument("--no-parent-watch", action="store_true",
                    help="keep running when the parent process dies")
    ap.add_argument("--no-warmup", action="store_true",
                    help="print the ready line before moto's EC2 backend is built")
    ap.add_argument("--verbose", action="store_true", help="moto/werkzeug access logs")
    args = ap.parse_args()

    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()
        if not announced.is_set():  # still starting: nothing to clean up
            os._exit(0)

    announced = threading.Event()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    t0 = time.monotonic()
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose else logging.ERROR)
    from moto.server import ThreadedMotoServer  # after the env is set

    moto = ThreadedMotoServer(ip_address=args.host, port=args.moto_port, verbose=False)
    moto.start()
    _, moto_port = moto.get_host_and_port()
    connect_host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host

    Handler.state = State(connect_host, moto_port)
    proxy = ProxyServer((args.host, args.port), Handler)
    proxy_port = proxy.server_address[1]
    threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.1},
                     daemon=True, name="proxy").start()

    # Warm moto up before announcing: the first EC2 call builds moto's EC2
    # backend (~0.9 s); the state it leaves is what any first call would see.
    if not args.no_warmup:
        try:
            Handler.state.ec2_call(WARMUP_HEADERS, {"Action": "DescribeVpcs"})
        except OSError as e:
            log(f"emulator: warm-up failed: {e}")

    sys.stdout.write(json.dumps({"ec2": f"http://{connect_host}:{proxy_port}",
                                 "moto": f"http://{connect_host}:{moto_port}"}) + "\n")
    sys.stdout.flush()
    announced.set()
    log(f"emulator: ready in {round((time.monotonic() - t0) * 1000)} ms, "
        f"proxy :{proxy_port} -> moto :{moto_port}")

    ppid = os.getppid()
    while not stop.wait(0.1):
        if not args.no_parent_watch and os.getppid() != ppid:
            log("emulator: parent died, exiting")
            break
    log("emulator: shutting down")
    # Held / hanging handler threads and both servers die with the process.
    try:
        sys.stdout.flush()
    except Exception:
        pass
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
