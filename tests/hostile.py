#!/usr/bin/env python3
"""Hostile SSH peers for tests/hostile.rs.

    python3 tests/hostile.py MODE --port P [options]

Pre-authentication modes speak the SSH transport by hand (its first packets
are not encrypted); post-authentication modes log in with paramiko and then
send messages paramiko would never send. Each mode prints one JSON object
with what it saw; the "hold" modes print `READY {json}` and keep their
connection until stdin is closed, so the test can measure the server while
the attack is in place.
"""

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time

HOST = "127.0.0.1"


def out(**fields):
    print(json.dumps(fields), flush=True)


# ----------------------------------------------------------------- transport by hand


def string(b):
    return struct.pack(">I", len(b)) + b


def namelist(names):
    return string(",".join(names).encode())


def packet(payload):
    pad = 8 - (5 + len(payload)) % 8
    if pad < 4:
        pad += 8
    return struct.pack(">IB", 1 + len(payload) + pad, pad) + payload + os.urandom(pad)


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def read_line(s):
    line = b""
    while not line.endswith(b"\n") and len(line) < 1024:
        chunk = s.recv(1)
        if not chunk:
            raise EOFError("connection closed")
        line += chunk
    return line


def read_packet(s):
    length = struct.unpack(">I", recv_exact(s, 4))[0]
    body = recv_exact(s, length)
    return body[1 : length - body[0]]


def kexinit(kex):
    ciphers = ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr"]
    macs = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-256"]
    return (
        bytes([20])
        + os.urandom(16)
        + namelist(kex)
        + namelist(["ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-256"])
        + namelist(ciphers) * 2
        + namelist(macs) * 2
        + namelist(["none"]) * 2
        + namelist([]) * 2
        + b"\x00"
        + b"\x00\x00\x00\x00"
    )


def connect(rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect((HOST, ARGS.port))
    return s


def handshake(s):
    """Banners both ways, then the server's KEXINIT; returns the server's banner."""
    banner = read_line(s)
    s.sendall(b"SSH-2.0-hostile\r\n")
    return banner


def until_closed(s, limit=30):
    """Reads until the server closes; what arrived (message numbers of whole packets are not parsed)."""
    s.settimeout(limit)
    received = 0
    start = time.monotonic()
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            received += len(chunk)
    except ConnectionResetError:
        pass
    except socket.timeout:
        return {"closed": False, "received": received}
    return {"closed": True, "received": received, "seconds": round(time.monotonic() - start, 3)}


def random_banner():
    s = connect()
    read_line(s)
    sent = 0
    try:
        for _ in range(64):
            s.sendall(os.urandom(1024))
            sent += 1024
    except (BrokenPipeError, ConnectionResetError):
        pass
    out(sent=sent, **until_closed(s))


def endless_banner():
    """`SSH-2.0-` and then a line that never ends, until the server hangs up (64 MiB at most)."""
    s = connect()
    read_line(s)
    sent = 0
    chunk = b"SSH-2.0-" + b"a" * 65528
    try:
        while sent < 64 << 20:
            s.sendall(chunk)
            sent += len(chunk)
            chunk = b"a" * 65536
    except (BrokenPipeError, ConnectionResetError):
        pass
    out(sent=sent, **until_closed(s))


def oversized_packet():
    """A packet length of 4 GiB - 16 right after the banner and KEXINIT."""
    s = connect()
    handshake(s)
    read_packet(s)  # the server's KEXINIT
    s.sendall(packet(kexinit(["curve25519-sha256"])))
    try:
        s.sendall(struct.pack(">I", 0xFFFFFFF0) + os.urandom(4096))
    except (BrokenPipeError, ConnectionResetError):
        pass
    out(**until_closed(s))


def zero_curve25519():
    """KEX_ECDH_INIT carrying the all-zero curve25519 public value (a low-order point)."""
    s = connect()
    handshake(s)
    read_packet(s)
    s.sendall(packet(kexinit(["curve25519-sha256", "curve25519-sha256@libssh.org"])))
    s.sendall(packet(bytes([30]) + string(bytes(32))))
    seen = []
    s.settimeout(30)
    try:
        while True:
            seen.append(read_packet(s)[0])
    except (EOFError, ConnectionResetError, IndexError):
        pass
    out(messages=seen, replied=31 in seen)


def stop_reading():
    """A full KEXINIT and ECDH_INIT, then never another read: the server's reply and all
    after it pile up in a 1 KiB receive buffer (so not even its FIN can arrive). Holds."""
    s = connect(rcvbuf=1024)
    handshake(s)
    s.sendall(packet(kexinit(["curve25519-sha256"])))
    s.sendall(packet(bytes([30]) + string(os.urandom(32))))
    hold({"sent": "KEXINIT, KEX_ECDH_INIT"})


# ----------------------------------------------------------------- after authentication (paramiko)


def login():
    import paramiko

    s = socket.create_connection((HOST, ARGS.port), timeout=10)
    # Without it, every small message waits for the server's delayed ACK (about 20 ms a channel).
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = paramiko.Transport(s)
    # The host key is not what these tests are about (tests/clients.rs pins it).
    t.start_client(timeout=10)
    t.auth_publickey(ARGS.user, paramiko.Ed25519Key.from_private_key_file(ARGS.key))
    assert t.is_authenticated()
    return t


def message(*parts):
    from paramiko.message import Message

    m = Message()
    for p in parts:
        if isinstance(p, bool):
            m.add_boolean(p)
        elif isinstance(p, int) and p < 0:
            m.add_byte(bytes([-p]))
        elif isinstance(p, int):
            m.add_int(p)
        else:
            m.add_string(p)
    return m


# Message numbers, negated so that message() writes them as one byte.
OPEN, CONFIRM, OPEN_FAIL, WINDOW, DATA, EXT_DATA, EOF, CLOSE, REQUEST, SUCCESS, FAILURE = (
    -90, -91, -92, -93, -94, -95, -96, -97, -98, -99, -100)


def alive(t):
    """A global request with want-reply answered: the connection is still served."""
    return t.global_request("keepalive@openssh.com", wait=True) is None and t.is_active()


def echo(t, size):
    """A real tunnel to the echo target carries `size` bytes back unchanged."""
    chan = t.open_channel("direct-tcpip", (ARGS.target_host, ARGS.target_port), ("127.0.0.1", 40000))
    return echo_on(chan, size)


def echo_on(chan, size):
    data = os.urandom(size)
    sender = threading.Thread(target=chan.sendall, args=(data,))
    sender.start()
    got = bytearray()
    while len(got) < size:
        chunk = chan.recv(65536)
        if not chunk:
            break
        got += chunk
    sender.join()
    chan.close()
    return bytes(got) == data


def channel_flood():
    from paramiko.common import MSG_CHANNEL_OPEN_FAILURE, MSG_CHANNEL_OPEN_SUCCESS

    t = login()
    counts = {"confirmed": 0, "failed": 0}
    done = threading.Event()

    def count(key):
        def handler(m):
            counts[key] += 1
            if counts["confirmed"] + counts["failed"] == ARGS.count:
                done.set()

        return handler

    t._handler_table[MSG_CHANNEL_OPEN_SUCCESS] = count("confirmed")
    t._handler_table[MSG_CHANNEL_OPEN_FAILURE] = count("failed")
    start = time.monotonic()
    for i in range(ARGS.count):
        t._send_message(message(OPEN, "direct-tcpip", 100000 + i, 2 << 20, 32768,
                                ARGS.target_host, ARGS.target_port, "127.0.0.1", 40000))
    answered = done.wait(120)
    out(answered=answered, seconds=round(time.monotonic() - start, 3), alive=alive(t), **counts)


def window_overflow():
    """WINDOW_ADJUST amounts that overflow a u32 window, then 1 MiB through the channel."""
    t = login()
    chan = t.open_channel("direct-tcpip", (ARGS.target_host, ARGS.target_port), ("127.0.0.1", 40000))
    for amount in (0xFFFFFFFF, 0xFFFFFFFF, 0x80000000, 0):
        t._send_message(message(WINDOW, chan.remote_chanid, amount))
    out(echoed=echo_on(chan, 1 << 20), alive=alive(t))


def no_such_channel():
    """Every channel message, each on a connection of its own, to a channel that was never
    opened (7777 and 2^32-1) and to one already closed: which ones the server ignores (the
    connection goes on, and a new tunnel on it works) and which end the connection."""
    kinds = {
        "data": lambda c: message(DATA, c, b"x" * 1000),
        "extended-data": lambda c: message(EXT_DATA, c, 1, b"x" * 1000),
        "window-adjust": lambda c: message(WINDOW, c, 1 << 20),
        "exec-request": lambda c: message(REQUEST, c, "exec", True, "id"),
        "pty-request": lambda c: message(REQUEST, c, "pty-req", True, "xterm", 80, 24, 0, 0, b""),
        "success": lambda c: message(SUCCESS, c),
        "failure": lambda c: message(FAILURE, c),
        "open-confirmation": lambda c: message(CONFIRM, c, 5, 1 << 20, 32768),
        "open-failure": lambda c: message(OPEN_FAIL, c, 2, "no", ""),
        "eof": lambda c: message(EOF, c),
        "close": lambda c: message(CLOSE, c),
    }
    outcome = {}
    for which in ("never-opened", "max", "closed"):
        for kind, make in kinds.items():
            t = login()
            target = {"never-opened": 7777, "max": 0xFFFFFFFF}.get(which)
            if target is None:
                chan = t.open_channel("direct-tcpip", (ARGS.target_host, ARGS.target_port), ("127.0.0.1", 40000))
                target = chan.remote_chanid
                chan.close()
            t._send_message(make(target))
            try:
                ok = alive(t) and echo(t, 64 << 10)
            except Exception:
                ok = False
            outcome.setdefault(kind, {})[which] = "ignored" if ok else "closed"
            t.close()
    out(outcome=outcome)


def hold(fields):
    """Prints READY and keeps everything open until the test closes stdin."""
    print("READY " + json.dumps(fields), flush=True)
    sys.stdin.read()


def never_read():
    """Opens --count tunnels to a target that streams, and never reads one byte."""
    t = login()
    chans = [t.open_channel("direct-tcpip", (ARGS.target_host, ARGS.target_port), ("127.0.0.1", 40000))
             for _ in range(ARGS.count)]
    hold({"channels": len(chans)})


def push():
    """Sends up to --bytes into each of --count tunnels whose target never reads, a thread
    per tunnel. With --ignore-window the data goes out as raw CHANNEL_DATA packets of
    --packet bytes whatever the window and the maximum packet size say. Stops when the
    server hangs up or nothing has moved for --stall seconds."""
    t = login()
    chans = [t.open_channel("direct-tcpip", (ARGS.target_host, ARGS.target_port), ("127.0.0.1", 40000))
             for _ in range(ARGS.count)]
    sent = [0] * len(chans)
    errors = []

    def send(i, chan):
        chunk = os.urandom(ARGS.packet)
        try:
            while sent[i] < ARGS.bytes:
                if ARGS.ignore_window:
                    t._send_message(message(DATA, chan.remote_chanid, chunk))
                    sent[i] += len(chunk)
                else:
                    sent[i] += chan.send(chunk)
        except Exception as e:  # the server hung up: that is a result, not a crash
            errors.append(repr(e))

    senders = [threading.Thread(target=send, args=(i, c), daemon=True) for i, c in enumerate(chans)]
    for s in senders:
        s.start()
    last, still = -1, time.monotonic()
    while any(s.is_alive() for s in senders) and t.is_active():
        time.sleep(0.2)
        if sum(sent) != last:
            last, still = sum(sent), time.monotonic()
        elif time.monotonic() - still > ARGS.stall:
            break
    if ARGS.ignore_window:
        # A server that hangs up may be noticed late on a loaded machine: give it time.
        deadline = time.monotonic() + 10
        while t.is_active() and time.monotonic() < deadline:
            time.sleep(0.1)
    hold({"sent": sum(sent), "disconnected": not t.is_active(), "errors": sorted(set(errors))[:3],
          "stalled": t.is_active() and any(s.is_alive() for s in senders)})


def churn():
    """Opens and closes --count channels on one connection, three kinds in turn: an exec the
    server refuses and closes, a tunnel to --closing-port whose target hangs up at once (the
    server closes the channel), and a tunnel to the echo target that this client closes after
    one echoed byte. Prints READY after the first --warmup channels and again after all of
    them, each time waiting for a line on stdin; then a last line with the counts."""
    t = login()
    seen = {"refused": 0, "target_closed": 0, "client_closed": 0}

    def one(i):
        kind = i % 3
        if kind == 0:
            chan = t.open_session(timeout=ARGS.timeout)
            chan.exec_command("true")
            assert chan.recv_exit_status() == 1
            chan.close()
            seen["refused"] += 1
        elif kind == 1:
            chan = t.open_channel("direct-tcpip", (ARGS.target_host, ARGS.closing_port), ("127.0.0.1", 40000),
                                  timeout=ARGS.timeout)
            assert chan.recv(1) == b""
            chan.close()
            seen["target_closed"] += 1
        else:
            chan = t.open_channel("direct-tcpip", (ARGS.target_host, ARGS.target_port), ("127.0.0.1", 40000),
                                  timeout=ARGS.timeout)
            chan.sendall(b"x")
            assert chan.recv(1) == b"x"
            chan.close()
            seen["client_closed"] += 1

    for i in range(ARGS.warmup):
        one(i)
    print("READY " + json.dumps(dict(seen, alive=alive(t))), flush=True)
    sys.stdin.readline()
    for i in range(ARGS.warmup, ARGS.count):
        one(i)
    print("READY " + json.dumps(dict(seen, alive=alive(t))), flush=True)
    sys.stdin.readline()
    t.close()
    out(**seen)


def idle_flood():
    """Opens --count connections from each of the --sources addresses that send the SSH
    identification and then nothing, the way a distributed slowloris holds every
    unauthenticated slot. Prints READY with how many got the server's banner, then holds them
    until stdin is closed, and at the end how many the server closed meanwhile."""
    conns = []
    for source in ARGS.sources.split(","):
        for _ in range(ARGS.count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((source, 0))
            s.settimeout(10)
            s.connect((HOST, ARGS.port))
            s.sendall(b"SSH-2.0-idle\r\n")
            conns.append(s)
    greeted = 0
    for s in conns:
        try:
            greeted += s.recv(7) == b"SSH-2.0"
        except OSError:
            pass
    hold({"connections": len(conns), "greeted": greeted})
    closed = 0
    for s in conns:
        s.setblocking(False)
        try:
            while s.recv(65536):
                pass
            closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    out(closed=closed)


def stall_then_trickle():
    """Opens a tunnel to --target-port (a target that never reads, with small socket buffers),
    sends 32 KiB packets until nothing moves for a second (the bastion's write to the target is
    stuck), then --count 1-byte data packets and --count window-change requests on that channel,
    none of which the stuck tunnel can take. Then opens a second tunnel, to --closing-port (an
    echo target), on the same connection: does the connection still work? With --then-hold,
    prints READY and holds the connection instead (the test may then stop this process)."""
    t = login()
    stuck = t.open_channel("direct-tcpip", (ARGS.target_host, ARGS.target_port), ("127.0.0.1", 40000),
                           timeout=ARGS.timeout)
    sent = [0]

    def fill():
        chunk = os.urandom(32768)
        try:
            while True:
                sent[0] += stuck.send(chunk)
        except Exception:
            pass

    threading.Thread(target=fill, daemon=True).start()
    # Stuck: the window is spent and nothing has moved for a second (a busy machine can pause
    # the sender for a second while the window is still open).
    last, since, give_up = -1, time.monotonic(), time.monotonic() + 60
    while (time.monotonic() - since < 1.0 or stuck.out_window_size > 0) and time.monotonic() < give_up:
        time.sleep(0.1)
        if sent[0] != last:
            last, since = sent[0], time.monotonic()
    window = stuck.out_window_size
    try:
        for _ in range(ARGS.count):
            t._send_message(message(DATA, stuck.remote_chanid, b"x"))
            t._send_message(message(REQUEST, stuck.remote_chanid, b"window-change", False, 80, 24, 0, 0))
    except Exception:  # the server hung up part way: that is a result, not a crash
        pass
    if ARGS.then_hold:
        hold({"filled": sent[0], "pid": os.getpid()})
        return
    try:
        probe = t.open_channel("direct-tcpip", (ARGS.target_host, ARGS.closing_port), ("127.0.0.1", 40001),
                               timeout=ARGS.timeout)
        probe.settimeout(ARGS.timeout)
        echoed = echo_on(probe, 65536)
    except Exception as e:  # the connection froze: that is the result
        echoed = repr(e)
    out(filled=sent[0], window_left=window, echoed=echoed, alive=t.is_active())


def squeeze():
    """Fills --count tunnels to --target-port (a target that never reads) until nothing moves,
    then opens one more, to the echo target at --closing-port, and tries a round trip on it for
    --stall seconds; then closes the full tunnels and tries again."""
    t = login()
    full = [t.open_channel("direct-tcpip", (ARGS.target_host, ARGS.target_port), ("127.0.0.1", 40000),
                           timeout=ARGS.timeout) for _ in range(ARGS.count)]
    sent = [0] * len(full)

    def fill(i, chan):
        chunk = os.urandom(ARGS.packet)
        try:
            while True:
                sent[i] += chan.send(chunk)
        except Exception:
            pass

    for i, chan in enumerate(full):
        threading.Thread(target=fill, args=(i, chan), daemon=True).start()
    # Full: every window spent and nothing moved for a second (see stall_then_trickle).
    last, since, give_up = -1, time.monotonic(), time.monotonic() + 60
    while ((time.monotonic() - since < 1.0 or any(c.out_window_size > 0 for c in full))
           and time.monotonic() < give_up):
        time.sleep(0.1)
        if sum(sent) != last:
            last, since = sum(sent), time.monotonic()
    newest = t.open_channel("direct-tcpip", (ARGS.target_host, ARGS.closing_port), ("127.0.0.1", 40001),
                            timeout=ARGS.timeout)
    got = bytearray()
    data = os.urandom(65536)

    def send_all():
        try:
            newest.sendall(data)
        except Exception:
            pass

    threading.Thread(target=send_all, daemon=True).start()
    newest.settimeout(ARGS.stall)
    try:
        while len(got) < len(data):
            got += newest.recv(65536)
    except socket.timeout:
        pass
    while_full = len(got)
    for chan in full:
        chan.close()
    newest.settimeout(ARGS.timeout)
    try:
        while len(got) < len(data):
            chunk = newest.recv(65536)
            if not chunk:
                break
            got += chunk
    except socket.timeout:
        pass
    out(filled=sum(sent), window_of_newest=newest.out_window_size, echoed_while_full=while_full,
        echoed_after=len(got), intact=bytes(got) == data, alive=t.is_active())


def cancel():
    """Opens --count tunnels one after another and closes each as soon as it is open, the
    way a browser on `ssh -D` cancels streams; the target never says anything. Counts the
    tunnels the server opened and refused."""
    import paramiko

    t = login()
    seen = {"opened": 0, "refused": []}
    for _ in range(ARGS.count):
        try:
            chan = t.open_channel("direct-tcpip", (ARGS.target_host, ARGS.target_port), ("127.0.0.1", 40000),
                                  timeout=ARGS.timeout)
        except paramiko.ChannelException as e:
            seen["refused"].append(e.text)
            continue
        seen["opened"] += 1
        chan.close()
    out(alive=alive(t), **seen)


MODES = {
    "squeeze": squeeze,
    "stall-then-trickle": stall_then_trickle,
    "idle-flood": idle_flood,
    "cancel": cancel,
    "churn": churn,
    "random-banner": random_banner,
    "endless-banner": endless_banner,
    "oversized-packet": oversized_packet,
    "zero-curve25519": zero_curve25519,
    "stop-reading": stop_reading,
    "channel-flood": channel_flood,
    "window-overflow": window_overflow,
    "no-such-channel": no_such_channel,
    "never-read": never_read,
    "push": push,
}

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default=HOST)
    p.add_argument("--sources", default="127.0.0.1")
    p.add_argument("--user", default="ops")
    p.add_argument("--key")
    p.add_argument("--target-host", default="127.0.0.1")
    p.add_argument("--target-port", type=int)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--closing-port", type=int)
    p.add_argument("--bytes", type=int, default=1 << 30)
    p.add_argument("--packet", type=int, default=32768)
    p.add_argument("--ignore-window", action="store_true")
    p.add_argument("--then-hold", action="store_true")
    p.add_argument("--stall", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=30.0)
    ARGS = p.parse_args()
    HOST = ARGS.host
    MODES[ARGS.mode]()
