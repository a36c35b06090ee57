#!/usr/bin/env python3
"""Publish one message to a NATS JetStream stream, as a batuta producer.

A producer in any language, speaking the NATS text protocol with nothing but
the Python standard library (no NATS client library), so that the message
format batuta expects is visible byte for byte:

    HPUB <subject> <reply-inbox> <header bytes> <total bytes>\r\n
    NATS/1.0\r\n
    Nats-Msg-Id: order-7\r\n        <- the event ID (and the stream's dedup key)
    type: order.created\r\n         <- the event type (header names are case-sensitive)
    \r\n
    {"id":7,"total_cents":700}\r\n  <- the event data

It waits for the stream's acknowledgement (PubAck) and prints it, e.g.
{"stream":"orders","seq":1} or, for a Nats-Msg-Id the stream has seen within
its duplicate window, {"stream":"orders","seq":1,"duplicate":true}. It exits
with status 1 if the server answers with an error or no stream captures the
subject.

Usage:
    nats_pub.py [-s nats://127.0.0.1:4222] [-H 'Name: value']... SUBJECT DATA
    nats_pub.py -s nats://127.0.0.1:4222 -H 'Nats-Msg-Id: order-7' \\
        -H 'type: order.created' batuta.orders '{"id":7,"total_cents":700}'

The server URL may carry credentials (nats://user:pass@host:4222, or
nats://token@host:4222); TLS is not supported by this sketch.

The batutanats adapter's subject for Config{Stream: "orders"} is
"batuta.orders". See docs/queues-redis-nats.md, "Producing from other
languages".
"""

import argparse
import json
import os
import socket
import sys
import urllib.parse


def read_line(f):
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed by the server")
    return line.rstrip(b"\r\n").decode()


def publish(server, subject, data, headers, timeout):
    u = urllib.parse.urlparse(server if "://" in server else "nats://" + server)
    sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 4222), timeout=timeout)
    try:
        f = sock.makefile("rb")
        info = read_line(f)
        if not info.startswith("INFO "):
            raise ConnectionError("expected INFO, got %r" % info)
        if not json.loads(info[5:]).get("headers"):
            raise ConnectionError("the server does not support headers (NATS 2.2 or later needed)")
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                   "protocol": 1, "lang": "python3-stdlib", "version": "1", "name": "batuta-nats-pub"}
        if u.username and u.password is not None:
            connect["user"] = urllib.parse.unquote(u.username)
            connect["pass"] = urllib.parse.unquote(u.password)
        elif u.username:
            connect["auth_token"] = urllib.parse.unquote(u.username)
        inbox = "_INBOX.batuta." + os.urandom(8).hex()
        hdr = "NATS/1.0\r\n" + "".join("%s: %s\r\n" % kv for kv in headers) + "\r\n"
        hdr_b = hdr.encode()
        body = data.encode()
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\n"
                     + ("SUB %s 1\r\n" % inbox).encode()
                     + ("HPUB %s %s %d %d\r\n" % (subject, inbox, len(hdr_b), len(hdr_b) + len(body))).encode()
                     + hdr_b + body + b"\r\n"
                     + b"PING\r\n")
        while True:
            line = read_line(f)
            if line == "PING":
                sock.sendall(b"PONG\r\n")
            elif line in ("PONG", "+OK") or line.startswith("INFO "):
                continue
            elif line.startswith("-ERR"):
                raise RuntimeError("server error: " + line)
            elif line.startswith("MSG ") or line.startswith("HMSG "):
                parts = line.split()
                size = int(parts[-1])
                payload = f.read(size + 2)[:size]
                if line.startswith("HMSG "):
                    hsize = int(parts[-2])
                    status = payload[:hsize].split(b"\r\n", 1)[0].decode()
                    if "503" in status:
                        raise RuntimeError("no stream captures subject %r (no responders)" % subject)
                    payload = payload[hsize:]
                ack = json.loads(payload) if payload else {}
                if "error" in ack:
                    raise RuntimeError("publish refused: %s" % json.dumps(ack["error"]))
                return ack
    finally:
        sock.close()


def main():
    p = argparse.ArgumentParser(description="Publish one message to NATS JetStream (stdlib only).")
    p.add_argument("-s", "--server", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'",
                   help="a header, e.g. 'Nats-Msg-Id: order-7' (repeatable)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the PubAck")
    p.add_argument("subject")
    p.add_argument("data")
    a = p.parse_args()
    headers = []
    for h in a.header:
        name, sep, value = h.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name or any(c in name for c in " \t\r\n") or any(c in value for c in "\r\n"):
            p.error("bad header %r: want 'Name: value' on one line" % h)
        headers.append((name, value))
    try:
        ack = publish(a.server, a.subject, a.data, headers, a.timeout)
    except (OSError, RuntimeError, ValueError) as e:
        print("nats_pub: %s" % e, file=sys.stderr)
        sys.exit(1)
    print(json.dumps(ack, separators=(",", ":")))


if __name__ == "__main__":
    main()
