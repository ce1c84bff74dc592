#!/usr/bin/env python3
"""Self-test of tests/aws/emulator.py with boto3.

    python3 tests/aws/selftest.py [-v]

Starts the emulator as a subprocess, checks every feature, prints PASS/FAIL per
check plus timings, exits non-zero on any failure, and always stops the emulator.
-v passes the emulator's stderr log through.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ.pop("AWS_PROFILE", None)

import boto3  # noqa: E402
import botocore.config  # noqa: E402
import botocore.exceptions  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EMULATOR = os.path.join(HERE, "emulator.py")
VERBOSE = "-v" in sys.argv

failures = []
passes = 0


def check(name, cond, detail=""):
    global passes
    if cond:
        passes += 1
        print(f"PASS {name}", flush=True)
    else:
        failures.append(name)
        print(f"FAIL {name} {detail}", flush=True)


def info(msg):
    print(f"INFO {msg}", flush=True)


class Emu:
    def __init__(self):
        self.log = None if VERBOSE else tempfile.NamedTemporaryFile(
            "w+", prefix="emulator-", suffix=".log", delete=False)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, EMULATOR, "--host", "127.0.0.1"],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        self.startup_s = time.monotonic() - t0
        self.line = line.strip()
        urls = json.loads(self.line)
        self.ec2 = urls["ec2"]
        self.moto = urls["moto"]
        host, port = self.ec2.rsplit("/", 1)[-1].split(":")
        self.host, self.port = host, int(port)

    def ctl(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.ec2 + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def client(self, endpoint=None, read_timeout=30):
        # NB: botocore's retries.max_attempts counts *retries* (1 = one retry);
        # total_max_attempts counts attempts, so 1 really disables retries.
        cfg = botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                     read_timeout=read_timeout, connect_timeout=5)
        return boto3.client("ec2", endpoint_url=endpoint or self.ec2, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            config=cfg)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except OSError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, n=40):
        if self.log is None:
            return ""
        self.log.flush()
        with open(self.log.name) as f:
            return "".join(f.readlines()[-n:])


def err(fn, *a, **kw):
    """Call fn, return (code, http_status) of the ClientError, or (None, None)."""
    try:
        fn(*a, **kw)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    return None, None


def vol_state(ec2, vol):
    v = ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]
    atts = v["Attachments"]
    return v["State"], (atts[0]["State"] if atts else None), (atts[0]["InstanceId"] if atts else None)


def eni_ips(ec2, eni):
    n = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]
    return [a["PrivateIpAddress"] for a in n["PrivateIpAddresses"]]


def run(emu):
    ec2 = emu.client()
    check("startup line is JSON with ec2 + moto",
          emu.line.startswith('{"ec2": "http://127.0.0.1:') and '"moto": "http://127.0.0.1:' in emu.line,
          emu.line)
    info(f"stdout line: {emu.line}")
    info(f"startup (spawn -> JSON line): {emu.startup_s * 1000:.0f} ms")

    t = time.monotonic()
    ec2.describe_vpcs()
    info(f"first EC2 call: {(time.monotonic() - t) * 1000:.0f} ms")

    # -- world -------------------------------------------------------------
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24",
                               AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    res = ec2.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2,
                            InstanceType="t3.micro", SubnetId=subnet)
    inst_a, inst_b = [i["InstanceId"] for i in res["Instances"]]
    eni_a, eni_b = [i["NetworkInterfaces"][0]["NetworkInterfaceId"] for i in res["Instances"]]
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    check("create VPC/subnet/2 instances/volume", all([vpc, subnet, inst_a, inst_b, vol]))

    # -- realism: attach / in use / polls ----------------------------------
    r = emu.ctl("GET", "/_emu/realism")
    check("realism defaults off", r["attach_polls"] == 0 and r["detach_polls"] == 0
          and r["refuse_attach_in_use"] is False, r)
    r = emu.ctl("POST", "/_emu/realism",
                {"attach_polls": 2, "detach_polls": 2, "refuse_attach_in_use": True})
    check("realism set", r["attach_polls"] == 2 and r["refuse_attach_in_use"] is True, r)

    a = ec2.attach_volume(VolumeId=vol, InstanceId=inst_a, Device="/dev/sdf")
    check("AttachVolume answer says attaching", a["State"] == "attaching", a["State"])
    states = [vol_state(ec2, vol) for _ in range(3)]
    check("attach_polls=2: attaching, attaching, attached",
          [s[1] for s in states] == ["attaching", "attaching", "attached"]
          and all(s[0] == "in-use" and s[2] == inst_a for s in states), states)

    code, status = err(ec2.attach_volume, VolumeId=vol, InstanceId=inst_b, Device="/dev/sdg")
    check("refuse_attach_in_use: VolumeInUse 400", (code, status) == ("VolumeInUse", 400),
          (code, status))
    check("volume still on A after refused attach", vol_state(ec2, vol)[2] == inst_a)

    d = ec2.detach_volume(VolumeId=vol)  # no InstanceId: emulator fills it in
    check("DetachVolume without InstanceId works", d["State"] == "detaching" and d["InstanceId"] == inst_a, d)
    s1 = vol_state(ec2, vol)
    code, status = err(ec2.attach_volume, VolumeId=vol, InstanceId=inst_b, Device="/dev/sdg")
    check("attach while detaching: IncorrectState 400", (code, status) == ("IncorrectState", 400),
          (code, status))
    s2 = vol_state(ec2, vol)
    s3 = vol_state(ec2, vol)
    check("detach_polls=2: detaching, detaching, available",
          s1 == ("in-use", "detaching", inst_a) and s2 == ("in-use", "detaching", inst_a)
          and s3 == ("available", None, None), [s1, s2, s3])
    a = ec2.attach_volume(VolumeId=vol, InstanceId=inst_b, Device="/dev/sdg")
    check("attach to B after detach", a["State"] == "attaching")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vol], WaiterConfig={"Delay": 0.01, "MaxAttempts": 5})
    check("botocore waiter sees in-use", vol_state(ec2, vol)[2] == inst_b)

    # raw XML of an emulated 'detaching' answer keeps moto's namespace
    emu.ctl("POST", "/_emu/realism", {"detach_polls": 1})
    ec2.detach_volume(VolumeId=vol, InstanceId=inst_b)
    raw = raw_ec2(emu, "Action=DescribeVolumes&Version=2016-11-15&VolumeId.1=" + vol)
    check("rewritten XML keeps namespace + detaching item",
          b'<DescribeVolumesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15">' in raw
          and b"<status>detaching</status>" in raw and b"ns0:" not in raw, raw[:300])
    emu.ctl("DELETE", "/_emu/realism")
    code, status = err(ec2.detach_volume, VolumeId=vol)
    check("DetachVolume of an available volume: IncorrectState 400",
          (code, status) == ("IncorrectState", 400), (code, status))

    # -- throttle + calls log ----------------------------------------------
    emu.ctl("DELETE", "/_emu/calls")
    emu.ctl("POST", "/_emu/faults", {"rules": [{"action": "DescribeVpcs", "kind": "throttle", "count": 2}]})
    got = [err(ec2.describe_vpcs) for _ in range(3)]
    check("throttle count 2: 2x RequestLimitExceeded 503 then success",
          got == [("RequestLimitExceeded", 503)] * 2 + [(None, None)], got)
    calls = emu.ctl("GET", "/_emu/calls")
    check("calls log counts retries",
          [(c["action"], c["status"], c["fault"]) for c in calls]
          == [("DescribeVpcs", 503, "throttle")] * 2 + [("DescribeVpcs", 200, None)], calls)
    check("faults used up", emu.ctl("GET", "/_emu/faults")["rules"] == [])
    raw = raw_ec2(emu, "Action=DescribeVpcs&Version=2016-11-15", fault="throttle")
    check("throttle XML is AWS's shape",
          raw.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
                         b"<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>"
                         b"</Error></Errors><RequestID>"), raw)

    # -- other error kinds, after, forever ---------------------------------
    emu.ctl("POST", "/_emu/faults", {"rules": [
        {"action": "DescribeVpcs", "kind": "server_error"},
        {"action": "DescribeVpcs", "kind": "unavailable"},
        {"action": "DescribeVpcs", "kind": "error", "status": 400, "code": "UnauthorizedOperation",
         "message": "nope"}]})
    got = [err(ec2.describe_vpcs) for _ in range(4)]
    check("server_error / unavailable / custom error, in order",
          got == [("InternalError", 500), ("Unavailable", 503), ("UnauthorizedOperation", 400),
                  (None, None)], got)

    emu.ctl("POST", "/_emu/faults", {"rules": [{"action": "DescribeSubnets", "kind": "throttle",
                                                 "after": 1, "count": 1}]})
    got = [err(ec2.describe_subnets)[0] for _ in range(3)]
    check("after=1 count=1: ok, fault, ok", got == [None, "RequestLimitExceeded", None], got)

    emu.ctl("POST", "/_emu/faults", {"rules": [{"action": "*", "kind": "server_error", "count": -1}]})
    got = [err(ec2.describe_subnets)[0] for _ in range(3)] + [err(ec2.describe_vpcs)[0]]
    listed = emu.ctl("GET", "/_emu/faults")["rules"]
    emu.ctl("DELETE", "/_emu/faults")
    check("count -1 on '*' is forever, DELETE clears",
          got == ["InternalError"] * 4 and len(listed) == 1 and err(ec2.describe_vpcs)[0] is None,
          (got, listed))
    try:
        emu.ctl("POST", "/_emu/faults", {"rules": [{"kind": "bogus"}]})
        check("bad rule refused", False)
    except urllib.error.HTTPError as e:
        check("bad rule refused with 400", e.code == 400)

    # -- apply_then_error on AssignPrivateIpAddresses ------------------------
    emu.ctl("POST", "/_emu/faults", {"rules": [{"action": "AssignPrivateIpAddresses",
                                                 "kind": "apply_then_error"}]})
    code, status = err(ec2.assign_private_ip_addresses, NetworkInterfaceId=eni_a,
                       PrivateIpAddresses=["10.0.1.100"], AllowReassignment=True)
    check("apply_then_error: client gets InternalError 500", (code, status) == ("InternalError", 500),
          (code, status))
    check("apply_then_error: address assigned anyway", "10.0.1.100" in eni_ips(ec2, eni_a),
          eni_ips(ec2, eni_a))

    # -- moto quirks: address filter, reassignment -----------------------------
    flt = [{"Name": "addresses.private-ip-address", "Values": ["10.0.1.100"]}]
    raw_hits = [n["NetworkInterfaceId"] for n in
                ec2.describe_network_interfaces(Filters=flt)["NetworkInterfaces"]]
    info(f"moto quirk: filter addresses.private-ip-address on a secondary IP finds {raw_hits} "
         f"(AWS: [{eni_a}])")
    emu.ctl("POST", "/_emu/realism", {"eni_address_filter": True})
    hits = [n["NetworkInterfaceId"] for n in
            ec2.describe_network_interfaces(Filters=flt + [{"Name": "vpc-id", "Values": [vpc]}])
            ["NetworkInterfaces"]]
    check("eni_address_filter: secondary IP filter finds its ENI", hits == [eni_a], hits)

    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_b, PrivateIpAddresses=["10.0.1.100"],
                                    AllowReassignment=True)
    on_a, on_b = "10.0.1.100" in eni_ips(ec2, eni_a), "10.0.1.100" in eni_ips(ec2, eni_b)
    info(f"moto quirk: AssignPrivateIpAddresses AllowReassignment=True -> on old ENI: {on_a}, "
         f"on new ENI: {on_b} (AWS: False, True)")
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni_b, PrivateIpAddresses=["10.0.1.100"])
    emu.ctl("POST", "/_emu/realism", {"ip_reassignment": True})
    code, _ = err(ec2.assign_private_ip_addresses, NetworkInterfaceId=eni_b,
                  PrivateIpAddresses=["10.0.1.100"], AllowReassignment=False)
    check("ip_reassignment: without AllowReassignment -> PrivateIpAddressInUse",
          code == "PrivateIpAddressInUse", code)
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_b, PrivateIpAddresses=["10.0.1.100"],
                                    AllowReassignment=True)
    check("ip_reassignment: AllowReassignment moves the address",
          "10.0.1.100" not in eni_ips(ec2, eni_a) and "10.0.1.100" in eni_ips(ec2, eni_b),
          (eni_ips(ec2, eni_a), eni_ips(ec2, eni_b)))
    hits = [n["NetworkInterfaceId"] for n in ec2.describe_network_interfaces(Filters=flt)["NetworkInterfaces"]]
    check("eni_address_filter follows the move", hits == [eni_b], hits)
    emu.ctl("DELETE", "/_emu/realism")

    # -- delay ---------------------------------------------------------------
    emu.ctl("POST", "/_emu/faults", {"rules": [{"action": "DescribeVpcs", "kind": "delay", "delay_ms": 500}]})
    t = time.monotonic()
    ok = err(ec2.describe_vpcs) == (None, None)
    dt = time.monotonic() - t
    check("delay 500 ms then normal answer", ok and 0.5 <= dt < 2.0, dt)

    # -- reset (connection closed, no answer) ----------------------------------
    emu.ctl("POST", "/_emu/faults", {"rules": [{"action": "CreateTags", "kind": "reset"}]})
    try:
        ec2.create_tags(Resources=[vpc], Tags=[{"Key": "k", "Value": "v"}])
        check("reset: connection dropped", False, "call succeeded")
    except botocore.exceptions.HTTPClientError as e:
        check("reset: connection dropped", True)
        info(f"reset -> botocore {e.__class__.__name__}")
    tags = ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"][0].get("Tags", [])
    check("reset: call was not forwarded", tags == [], tags)

    # -- hang ------------------------------------------------------------------
    emu.ctl("DELETE", "/_emu/calls")
    emu.ctl("POST", "/_emu/faults", {"rules": [{"action": "DescribeVpcs", "kind": "hang"}]})
    short = emu.client(read_timeout=1)
    t = time.monotonic()
    try:
        short.describe_vpcs()
        check("hang: client times out", False, "answered")
    except botocore.exceptions.ReadTimeoutError:
        dt = time.monotonic() - t
        check("hang: client read timeout after ~1 s", 0.9 <= dt < 3, dt)
    time.sleep(0.3)
    calls = emu.ctl("GET", "/_emu/calls")
    check("hang: logged with fault=hang, no status",
          [(c["fault"], c["status"]) for c in calls] == [("hang", None)], calls)
    check("emulator still answers after hang", err(ec2.describe_vpcs) == (None, None))

    # -- pause / resume ----------------------------------------------------------
    emu.ctl("POST", "/_emu/pause")
    result = {}

    def bg():
        t = time.monotonic()
        try:
            result["vpcs"] = len(emu.client().describe_vpcs()["Vpcs"])
        except Exception as e:  # noqa
            result["error"] = repr(e)
        result["dt"] = time.monotonic() - t

    th = threading.Thread(target=bg)
    th.start()
    time.sleep(1.0)
    held = th.is_alive()
    ctl_ok = emu.ctl("GET", "/_emu/health")["paused"] is True
    emu.ctl("POST", "/_emu/resume")
    th.join(10)
    check("pause holds the call, control API still answers", held and ctl_ok)
    check("resume: held call answered normally", result.get("vpcs", 0) >= 1 and result["dt"] >= 1.0,
          result)

    # -- SIGSTOP / SIGCONT -------------------------------------------------------
    result.clear()
    os.kill(emu.proc.pid, signal.SIGSTOP)
    th = threading.Thread(target=bg)
    th.start()
    time.sleep(0.5)
    held = th.is_alive()
    os.kill(emu.proc.pid, signal.SIGCONT)
    th.join(10)
    check("SIGSTOP holds, SIGCONT answers", held and result.get("vpcs", 0) >= 1, result)

    # -- keep-alive ----------------------------------------------------------------
    conn = http.client.HTTPConnection(emu.host, emu.port, timeout=5)
    socks, statuses = [], []
    emu.ctl("POST", "/_emu/faults", {"rules": [{"action": "DescribeVpcs", "kind": "throttle"}]})
    for method, path, body in [("POST", "/", "Action=DescribeVpcs&Version=2016-11-15"),
                               ("GET", "/_emu/faults", None),
                               ("POST", "/", "Action=DescribeVpcs&Version=2016-11-15"),
                               ("POST", "/", "Action=DescribeNothing&Version=2016-11-15"),
                               ("POST", "/", "Action=DescribeVpcs&Version=2016-11-15")]:
        conn.request(method, path, body=body, headers=sign_headers())
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
        socks.append(id(conn.sock))
    conn.close()
    check("HTTP/1.1 keep-alive: one connection for EC2, control, error answers",
          len(set(socks)) == 1 and statuses[0] == 503 and statuses[2] == 200
          and statuses[4] == 200, (statuses, socks))

    # -- latency ---------------------------------------------------------------------
    direct = emu.client(endpoint=emu.moto)
    n = 50
    t = time.monotonic()
    for _ in range(n):
        ec2.describe_vpcs()
    via = (time.monotonic() - t) / n * 1000
    t = time.monotonic()
    for _ in range(n):
        direct.describe_vpcs()
    raw = (time.monotonic() - t) / n * 1000
    info(f"per-call latency DescribeVpcs: via proxy {via:.1f} ms, moto direct {raw:.1f} ms")
    check("per-call latency via proxy < 100 ms", via < 100, via)

    # -- reset -------------------------------------------------------------------------
    emu.ctl("POST", "/_emu/faults", {"rules": [{"action": "*", "kind": "throttle", "count": -1}]})
    emu.ctl("POST", "/_emu/realism", {"attach_polls": 3})
    r = emu.ctl("POST", "/_emu/reset")
    res = ec2.describe_instances()["Reservations"]
    check("reset clears faults, calls, realism and moto state",
          r["reset"] and res == [] and emu.ctl("GET", "/_emu/faults")["rules"] == []
          and len(emu.ctl("GET", "/_emu/calls")) == 1
          and emu.ctl("GET", "/_emu/realism")["attach_polls"] == 0, (r, res))


def sign_headers():
    return {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/ec2/aws4_request, "
                             "SignedHeaders=host, Signature=0"}


def raw_ec2(emu, body, fault=None):
    if fault:
        emu.ctl("POST", "/_emu/faults", {"rules": [{"action": "*", "kind": fault}]})
    conn = http.client.HTTPConnection(emu.host, emu.port, timeout=5)
    conn.request("POST", "/", body=body, headers=sign_headers())
    data = conn.getresponse().read()
    conn.close()
    return data


def main():
    emu = None
    try:
        emu = Emu()
        run(emu)
    except Exception:
        traceback.print_exc()
        failures.append("exception")
    finally:
        if emu is not None:
            t = time.monotonic()
            rc = emu.stop()
            check("SIGTERM: clean exit 0", rc == 0, rc)
            info(f"shutdown: {(time.monotonic() - t) * 1000:.0f} ms")
            if failures:
                print("--- emulator log tail ---\n" + emu.log_tail(), flush=True)
            elif emu.log is not None:
                os.unlink(emu.log.name)
    print(f"{passes} passed, {len(failures)} failed" + (f": {failures}" if failures else ""))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
