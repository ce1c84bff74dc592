#!/usr/bin/env python3
"""Helpers of scripts/bench-alloc.sh (the allocator comparison). Loopback only, every loop bounded.

  sample PID OUT [--every S] [--max S]   one line per S seconds: epoch, VmRSS kB, Pss kB, utime+stime ticks;
                                         stops when PID is gone or after --max seconds
  pbx IP:PORT --max S                    a silent PBX: answers OPTIONS 200, never anything else; bounded by --max
  flood FROM_IP TO_IP:PORT --rate R --max N --secs S
                                         N INVITEs at most, R per second, S seconds at most (like tests/attack's
                                         flood: a new call each, never ACKed); prints a JSON summary
  report OUT_DIR                         the per-variant tables (markdown) from what the .sh left in OUT_DIR
"""
import json
import os
import re
import socket
import statistics
import sys
import threading
import time

TICKS = os.sysconf("SC_CLK_TCK")


def arg(argv, name, default, conv=float):
    return conv(argv[argv.index(name) + 1]) if name in argv else default


# ------------------------------------------------------------------------------------------------ sample
def read_mem(pid):
    rss = pss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    return rss, pss, int(st[11]) + int(st[12])


def cmd_sample(argv):
    pid, out = int(argv[0]), argv[1]
    every, max_s = arg(argv, "--every", 1.0), arg(argv, "--max", 3600.0)
    end = time.time() + max_s
    with open(out, "w") as f:
        while time.time() < end:
            try:
                rss, pss, ticks = read_mem(pid)
            except (FileNotFoundError, ProcessLookupError):
                break
            f.write(f"{time.time():.2f} {rss} {pss} {ticks}\n")
            f.flush()
            time.sleep(every)


def load_samples(path):
    rows = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) == 4:
                rows.append((float(p[0]), int(p[1]), int(p[2]), int(p[3])))
    return rows


def at(rows, t):
    """The sample nearest to time t (None if t is off the sampled span by more than 3 s)."""
    if not rows:
        return None
    best = min(rows, key=lambda r: abs(r[0] - t))
    return best if abs(best[0] - t) <= 3 else None


# ------------------------------------------------------------------------------------------------ pbx
def header(msg, name):
    m = re.search(rb"^" + name + rb":[ \t]*(.*?)\r?$", msg, re.M | re.I)
    return m.group(1) if m else b""


def cmd_pbx(argv):
    host, port = argv[0].rsplit(":", 1)
    max_s = arg(argv, "--max", 600.0)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((host, int(port)))
    s.settimeout(0.5)
    end = time.time() + max_s
    invites = 0
    while time.time() < end:
        try:
            d, src = s.recvfrom(70000)
        except socket.timeout:
            continue
        if d.startswith(b"OPTIONS "):
            vias = re.findall(rb"^(?:Via|v):.*?\r?$", d, re.M | re.I)
            resp = (b"SIP/2.0 200 OK\r\n" + b"\r\n".join(v.rstrip(b"\r") for v in vias) + b"\r\n"
                    + b"From: " + header(d, b"From") + b"\r\nTo: " + header(d, b"To") + b";tag=pbx\r\n"
                    + b"Call-ID: " + header(d, b"Call-ID") + b"\r\nCSeq: " + header(d, b"CSeq")
                    + b"\r\nContent-Length: 0\r\n\r\n")
            s.sendto(resp, src)
        elif d.startswith(b"INVITE "):
            invites += 1     # silent: the caller waits until sipfront's timer B


# ------------------------------------------------------------------------------------------------ flood
def flood_invite(i, frm, to):
    ip = frm[0]
    sdp = (f"v=0\r\no=- {i} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
           f"m=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n")
    f, t = f"{frm[0]}:{frm[1]}", f"{to[0]}:{to[1]}"
    return (f"INVITE sip:flood{i}@{t} SIP/2.0\r\nVia: SIP/2.0/UDP {f};branch=z9hG4bK-fl{i};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:attacker@{ip}>;tag=fl{i}\r\nTo: <sip:flood{i}@{t}>\r\n"
            f"Call-ID: flood-{i}\r\nCSeq: 1 INVITE\r\nContact: <sip:attacker@{f}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}").encode()


def cmd_flood(argv):
    frm_ip = argv[0]
    host, port = argv[1].rsplit(":", 1)
    to = (host, int(port))
    rate, maxn, secs = arg(argv, "--rate", 2500.0), arg(argv, "--max", 25000, int), arg(argv, "--secs", 10.0)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((frm_ip, 0))
    frm = s.getsockname()
    s.settimeout(0.05)
    codes, stop = {}, threading.Event()

    def reader():
        while not stop.is_set():
            try:
                d = s.recv(70000)
            except socket.timeout:
                continue
            if d.startswith(b"SIP/2.0 "):
                m = re.search(rb"Call-ID: flood-(\d+)", d)
                if m:
                    codes.setdefault(d[8:11].decode(), set()).add(int(m.group(1)))

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    t0 = time.time()
    n = 0
    while n < maxn and time.time() - t0 < secs:
        due = min(maxn, int(rate * (time.time() - t0)) + 1)
        while n < due:
            try:
                s.sendto(flood_invite(n, frm, to), to)
            except OSError:
                pass
            n += 1
        time.sleep(0.001)
    t1 = time.time()
    time.sleep(1.0)
    stop.set()
    th.join(2)
    print(json.dumps({"sent": n, "from": f"{frm[0]}:{frm[1]}", "start": round(t0, 2), "end": round(t1, 2),
                      "took_s": round(t1 - t0, 2), "answers": {k: len(v) for k, v in sorted(codes.items())}}))


# ------------------------------------------------------------------------------------------------ report
def load_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def mb(kb):
    return f"{kb / 1024:.0f}" if kb is not None else "-"


def tail_row(rows, idle_t, end_t, tail, trims):
    idle = at(rows, idle_t)
    out = {"idle": idle[1] if idle else None, "idle_pss": idle[2] if idle else None}
    pts = [("end", 0)] + [(f"+{x}", x) for x in tail]
    for name, dt in pts:
        r = at(rows, end_t + dt)
        out[name] = r[1] if r else None
        out[name + "_pss"] = r[2] if r else None
    span = [r for r in rows if idle_t <= r[0] <= end_t + 2]
    out["peak"] = max((r[1] for r in span), default=None)
    out["peak_pss"] = max((r[2] for r in span), default=None)
    out["trims"] = [round(t - end_t) for t in trims if t >= end_t - 60]
    return out


def trims_from_log(path):
    """Epoch times of the trims that released memory (RUST_LOG has sipfront::memory at debug)."""
    ts = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if "allocator trimmed released=1" in line:   # malloc_trim said it released memory
                    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
                    if m:
                        import datetime
                        d = datetime.datetime.strptime(m.group(1)[:26], "%Y-%m-%dT%H:%M:%S.%f")
                        ts.append(d.replace(tzinfo=datetime.timezone.utc).timestamp())
    except OSError:
        pass
    return ts


def cmd_report(argv):
    out = argv[0]
    tail = [int(x) for x in (arg(argv, "--tail", "10 30 60 90 120", str)).split()]
    meta = load_json(os.path.join(out, "meta.json"), {})
    lines = [f"# Allocator comparison, {meta.get('date', '')}", "",
             f"Ladder: `run-bench.sh {meta.get('bench_args', '')}`; flood: {meta.get('flood', '')}", ""]
    summary = []
    for v in meta.get("variants", []):
        vd = os.path.join(out, v)
        vm = load_json(os.path.join(vd, "variant.json"), {})
        lines += [f"## {v}", "", f"binary: {vm.get('binary')} ({vm.get('binary_mb')} MB), env: "
                  f"`{vm.get('env') or '-'}`; uptime before the ladder: {vm.get('uptime_ladder', '-')}; "
                  f"before the flood: {vm.get('uptime_flood', '-')}", ""]
        # ladder steps
        lad = os.path.join(vd, "ladder")
        lines += ["| calls/s | sipfront CPU % | Kamailio CPU % | ratio | sipfront PSS MB | Kamailio PSS MB | "
                  "sipfront verdict | Kamailio verdict | bg busy % |", "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
        steps = sorted(d for d in os.listdir(os.path.join(lad, "sipfront"))) if os.path.isdir(
            os.path.join(lad, "sipfront")) else []
        cpus = []
        for sd in steps:
            if not sd.startswith("step-"):
                continue
            s = load_json(os.path.join(lad, "sipfront", sd, "row.json"), {})
            k = load_json(os.path.join(lad, "kamailio", sd, "row.json"), {})
            sc, kc = s.get("proxy_cpu"), k.get("proxy_cpu")
            ratio = f"{sc / kc:.2f}" if sc and kc else "-"
            cpus.append((s.get("rate"), sc, kc))
            lines.append(f"| {s.get('rate')} | {sc} | {kc} | {ratio} | {s.get('proxy_pss_mb')} | "
                         f"{k.get('proxy_pss_mb')} | {s.get('verdict')} | {k.get('verdict')} | {s.get('bg_busy')} |")
        lines.append("")
        hdr = "| load | idle | peak | end | " + " | ".join(f"+{x} s" for x in tail) + " | trims that released memory (s after end) |"
        lines += ["Memory after the load, MB, VmRSS / Pss (sampled every second):", "", hdr,
                  "| --- | " + " | ".join("---:" for _ in range(len(tail) + 3)) + " | --- |"]
        trims = trims_from_log(os.path.join(vd, "ladder-sipfront.log")) + trims_from_log(
            os.path.join(vd, "flood-sipfront.log"))
        for load in ("ladder", "flood"):
            rows = load_samples(os.path.join(vd, f"{load}-samples.txt")) if os.path.exists(
                os.path.join(vd, f"{load}-samples.txt")) else []
            t = load_json(os.path.join(vd, f"{load}-times.json"), {})
            if not rows or "end" not in t:
                lines.append(f"| {load} | (not run) |")
                continue
            r = tail_row(rows, t["idle"], t["end"], tail, trims)
            r60 = r.get("+60")
            ok = "yes" if r60 and r["idle"] and r60 <= 2 * r["idle"] else "no"
            cell = lambda k: f"{mb(r.get(k))} / {mb(r.get(k + '_pss'))}"
            lines.append(f"| {load} | {cell('idle')} | {cell('peak')} | {cell('end')} | "
                         + " | ".join(cell(f"+{x}") for x in tail) + f" | {', '.join(map(str, r['trims'])) or '-'} |")
            summary.append((v, load, r, ok))
        lines.append("")
    lines += ["## Target: RSS within 2x of idle 60 s after the load", "", "| variant | load | idle MB | +60 s MB | "
              "+60/idle | within 2x |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for v, load, r, ok in summary:
        q = f"{r['+60'] / r['idle']:.2f}" if r.get("+60") and r["idle"] else "-"
        lines.append(f"| {v} | {load} | {mb(r['idle'])} | {mb(r.get('+60'))} | {q} | {ok} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    print(text)


def main():
    cmd, argv = sys.argv[1], sys.argv[2:]
    {"sample": cmd_sample, "pbx": cmd_pbx, "flood": cmd_flood, "report": cmd_report}[cmd](argv)


if __name__ == "__main__":
    main()
