#!/usr/bin/env python3
"""A DNS server and a tunnel target for tests/resolve.rs, run inside its
network namespace (Python standard library only).

    python3 tests/dns_stub.py --echo-port P

DNS on 127.0.0.1:53, UDP and TCP:
  - names under good.test: A 127.0.0.1 (and no AAAA record);
  - names under slow.test: no answer, ever (the query is read and dropped,
    a TCP connection is held open): a zone whose name servers never answer;
  - any other name: NXDOMAIN.
Prints `query NAME TYPE` for each question, and `ready` once every socket
listens. Also an echo service on 127.0.0.1:P (TCP), the tunnels' target.
Runs until killed.
"""

import argparse
import socket
import struct
import threading

TYPES = {1: "A", 28: "AAAA"}


def say(line):
    print(line, flush=True)


def question(query):
    """(name, qtype, end of the question section) of a DNS query."""
    labels, at = [], 12
    while query[at]:
        length = query[at]
        labels.append(query[at + 1 : at + 1 + length].decode("ascii", "replace"))
        at += 1 + length
    at += 1
    qtype = struct.unpack(">H", query[at : at + 2])[0]
    return ".".join(labels).lower(), qtype, at + 4


def answer(query):
    """The reply to `query`, or None for a name that is never answered."""
    name, qtype, end = question(query)
    say(f"query {name} {TYPES.get(qtype, qtype)}")
    if name == "slow.test" or name.endswith(".slow.test"):
        return None
    good = name == "good.test" or name.endswith(".good.test")
    records = b""
    if good and qtype == 1:
        # The name by pointer to the question, A, IN, TTL 60, 4 bytes: 127.0.0.1.
        records = struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
    flags = 0x8180 if good else 0x8183  # QR RD RA, and NOERROR or NXDOMAIN
    header = struct.pack(">HHHHHH", struct.unpack(">H", query[:2])[0], flags, 1, 1 if records else 0, 0, 0)
    return header + query[12:end] + records


def serve_udp(sock):
    while True:
        query, peer = sock.recvfrom(4096)
        try:
            reply = answer(query)
        except (IndexError, struct.error):
            continue
        if reply is not None:
            sock.sendto(reply, peer)


def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve_tcp_client(conn):
    with conn:
        while True:
            length = recv_exact(conn, 2)
            query = length and recv_exact(conn, struct.unpack(">H", length)[0])
            if not query:
                return
            try:
                reply = answer(query)
            except (IndexError, struct.error):
                return
            if reply is None:
                while conn.recv(4096):  # hold the connection, never answer
                    pass
                return
            conn.sendall(struct.pack(">H", len(reply)) + reply)


def echo(conn):
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                conn.shutdown(socket.SHUT_WR)
                return
            conn.sendall(data)


def accept_forever(listener, handler):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--echo-port", type=int, required=True)
    args = parser.parse_args()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 53))
    tcp = socket.create_server(("127.0.0.1", 53))
    target = socket.create_server(("127.0.0.1", args.echo_port))
    threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
    threading.Thread(target=accept_forever, args=(tcp, serve_tcp_client), daemon=True).start()
    threading.Thread(target=accept_forever, args=(target, echo), daemon=True).start()
    say("ready")
    threading.Event().wait()  # until the test kills us


if __name__ == "__main__":
    main()
