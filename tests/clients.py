#!/usr/bin/env python3
"""The Python SSH clients of the compatibility matrix (tests/clients.rs).

    python3 clients.py CLIENT forward --port P --user U --key K --known-hosts F --host-key LINE --target HOST:PORT
    python3 clients.py CLIENT exec    --port P --user U --key K --known-hosts F --host-key LINE --command CMD

CLIENT is asyncssh, paramiko or ssh2 (ssh2-python, i.e. libssh2). Each logs in
to bastion-sshd on 127.0.0.1 with the private key K (OpenSSH format), after
verifying the server's host key against the pin: asyncssh and paramiko look it
up in the known_hosts file F (`[127.0.0.1]:PORT type key`); for libssh2 the
key blob the server sent is compared with LINE (`ssh-ed25519 AAAA…`).

forward: like `ssh -N -L 127.0.0.1:0:HOST:PORT`: listens on a free loopback
port, prints `forwarding 127.0.0.1:<port>` on stdout once it listens (after
the login), and carries each accepted connection over its own direct-tcpip
channel, half-closes included, until it is killed.

exec: runs CMD on a session channel and prints one JSON line
{"exit_status": N, "stdout": "...", "stderr": "..."}.

Every run prints `negotiated: ...` (what the client agreed on) to stderr.
A failure prints `error: <exception type>: <message>` to stderr and exits 2.
--rsa-sig rsa-sha2-256|rsa-sha2-512 makes the client sign with that algorithm;
--ciphers A,B limits the ciphers the client offers (as an older release would).
"""

import argparse
import base64
import json
import select
import socket
import sys
import threading

HOST = "127.0.0.1"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def announce(port):
    print(f"forwarding {HOST}:{port}", flush=True)


class KexSeen:
    """Remembers the key exchange a library's debug log names (`prefix` X)."""

    def __init__(self, logger_name, prefix, level):
        import logging

        self.kex = "?"
        self.prefix = prefix
        outer = self

        class Handler(logging.Handler):
            def emit(self, record):
                message = record.getMessage()
                at = message.find(outer.prefix)
                if at >= 0:
                    outer.kex = message[at + len(outer.prefix) :].strip().strip("b'")

        logger = logging.getLogger(logger_name)
        logger.addHandler(Handler(level=logging.DEBUG))
        logger.setLevel(level)
        logger.propagate = False


def pinned_blob(host_key_line):
    """The key blob of `type base64 [comment]`."""
    return base64.b64decode(host_key_line.split()[1])


# ---------------------------------------------------------------- asyncssh


def run_asyncssh(args):
    import asyncio

    import asyncssh

    asyncssh.set_debug_level(2)
    seen = KexSeen("asyncssh", "Key exchange alg:", 1)

    async def main():
        options = dict(
            username=args.user,
            client_keys=[args.key],
            known_hosts=args.known_hosts,
            agent_path=None,
            config=None,
            password=None,
            kbdint_auth=False,
        )
        if args.rsa_sig:
            options["signature_algs"] = [args.rsa_sig]
        if args.ciphers:
            options["encryption_algs"] = args.ciphers.split(",")
        conn = await asyncssh.connect(HOST, args.port, **options)
        try:
            log(
                "negotiated: asyncssh %s kex=%s cipher=%s host_key=%s"
                % (
                    asyncssh.__version__,
                    seen.kex,
                    getattr(conn, "_enc_alg_cs", b"?").decode(),
                    conn.get_server_host_key().get_algorithm(),
                )
            )
            if args.mode == "exec":
                result = await conn.run(args.command, check=False)
                print(
                    json.dumps(
                        {"exit_status": result.exit_status, "stdout": result.stdout, "stderr": result.stderr}
                    ),
                    flush=True,
                )
            else:
                host, port = args.target.rsplit(":", 1)
                listener = await conn.forward_local_port(HOST, 0, host, int(port))
                announce(listener.get_port())
                await listener.wait_closed()
        finally:
            conn.close()
            await conn.wait_closed()

    asyncio.run(main())


# ---------------------------------------------------------------- paramiko


def run_paramiko(args):
    import paramiko

    seen = KexSeen("paramiko.transport", "Kex:", 10)
    client = paramiko.SSHClient()
    client.load_host_keys(args.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    disabled = {}
    if args.rsa_sig:
        other = {"rsa-sha2-256": "rsa-sha2-512", "rsa-sha2-512": "rsa-sha2-256"}[args.rsa_sig]
        disabled["pubkeys"] = [other]
    if args.ciphers:
        offered = args.ciphers.split(",")
        disabled["ciphers"] = [c for c in paramiko.Transport._preferred_ciphers if c not in offered]
    client.connect(
        HOST,
        port=args.port,
        username=args.user,
        key_filename=args.key,
        allow_agent=False,
        look_for_keys=False,
        disabled_algorithms=disabled,
        timeout=20,
        auth_timeout=20,
        banner_timeout=20,
    )
    transport = client.get_transport()
    log(
        "negotiated: paramiko %s kex=%s cipher=%s host_key=%s"
        % (
            paramiko.__version__,
            seen.kex,
            transport.local_cipher,
            transport.get_remote_server_key().get_name(),
        )
    )
    if args.mode == "exec":
        chan = transport.open_session(timeout=20)
        chan.exec_command(args.command)
        out, err = chan.makefile("rb").read(), chan.makefile_stderr("rb").read()
        status = chan.recv_exit_status()
        print(json.dumps({"exit_status": status, "stdout": out.decode(), "stderr": err.decode()}), flush=True)
        client.close()
        return

    host, port = args.target.rsplit(":", 1)
    listener = socket.create_server((HOST, 0))
    announce(listener.getsockname()[1])

    def pump(src_recv, dst_send, at_eof):
        while True:
            data = src_recv(65536)
            if not data:
                break
            dst_send(data)
        at_eof()

    def serve(local, peer):
        chan = transport.open_channel("direct-tcpip", (host, int(port)), peer, timeout=20)
        up = threading.Thread(target=pump, args=(local.recv, chan.sendall, chan.shutdown_write), daemon=True)
        down = threading.Thread(
            target=pump, args=(chan.recv, local.sendall, lambda: local.shutdown(socket.SHUT_WR)), daemon=True
        )
        up.start()
        down.start()
        up.join()
        down.join()
        chan.close()
        local.close()

    while transport.is_active():
        local, peer = listener.accept()
        threading.Thread(target=serve, args=(local, peer), daemon=True).start()


# ---------------------------------------------------------------- ssh2-python (libssh2)


def run_ssh2(args):
    import ssh2
    from ssh2.error_codes import LIBSSH2_ERROR_EAGAIN as EAGAIN
    from ssh2.session import (
        LIBSSH2_METHOD_CRYPT_CS,
        LIBSSH2_METHOD_CRYPT_SC,
        LIBSSH2_METHOD_HOSTKEY,
        LIBSSH2_METHOD_KEX,
        LIBSSH2_SESSION_BLOCK_INBOUND,
        LIBSSH2_SESSION_BLOCK_OUTBOUND,
        MethodType,
        Session,
    )

    sock = socket.create_connection((HOST, args.port), timeout=20)
    sock.settimeout(None)
    session = Session()
    session.set_timeout(20000)
    if args.rsa_sig:
        # LIBSSH2_METHOD_SIGN_ALGO (libssh2 >= 1.11), which ssh2-python does not name.
        session.method_pref(MethodType(10), args.rsa_sig)
    if args.ciphers:
        session.method_pref(LIBSSH2_METHOD_CRYPT_CS, args.ciphers)
        session.method_pref(LIBSSH2_METHOD_CRYPT_SC, args.ciphers)
    session.handshake(sock)
    key, _ = session.hostkey()
    if key != pinned_blob(args.host_key):
        raise RuntimeError("host key mismatch: the server's key is not the pinned one")
    log(
        "negotiated: libssh2 (ssh2-python %s) kex=%s cipher=%s host_key=%s"
        % (
            ssh2.__version__,
            session.methods(LIBSSH2_METHOD_KEX),
            session.methods(LIBSSH2_METHOD_CRYPT_CS),
            session.methods(LIBSSH2_METHOD_HOSTKEY),
        )
    )
    session.userauth_publickey_fromfile(args.user, args.key)
    if not session.userauth_authenticated():
        raise RuntimeError("not authenticated")

    if args.mode == "exec":
        chan = session.open_session()
        chan.execute(args.command)
        out, err = b"", b""
        while True:
            size, data = chan.read(65536)
            if size <= 0:
                break
            out += data
        while True:
            size, data = chan.read_stderr(65536)
            if size <= 0:
                break
            err += data
        chan.wait_eof()
        chan.close()
        chan.wait_closed()
        status = chan.get_exit_status()
        print(json.dumps({"exit_status": status, "stdout": out.decode(), "stderr": err.decode()}), flush=True)
        session.disconnect()
        return

    # A local forward with one thread: libssh2 sessions are not thread-safe,
    # so the session is non-blocking and one select loop serves every
    # forwarded connection in both directions.
    host, port = args.target.rsplit(":", 1)
    listener = socket.create_server((HOST, 0))
    listener.setblocking(False)
    announce(listener.getsockname()[1])
    session.set_blocking(False)

    class Forward:
        def __init__(self, local, chan):
            self.local, self.chan = local, chan
            self.to_chan = b""  # read from the local side, not yet on the channel
            self.to_local = b""  # read from the channel, not yet sent locally
            self.local_eof = False  # the local side half-closed
            self.eof_sent = False  # ... and the channel got EOF for it
            self.chan_eof = False  # the channel's remote side sent EOF
            self.shut_local = False  # ... and the local side got it

    def again(call):
        """Retries a non-blocking libssh2 call until it does not say EAGAIN."""
        while True:
            rc = call()
            if rc != EAGAIN:
                return rc
            wait_socket()

    def wait_socket(timeout=1.0):
        directions = session.block_directions()
        readers = [sock] if directions & LIBSSH2_SESSION_BLOCK_INBOUND else []
        writers = [sock] if directions & LIBSSH2_SESSION_BLOCK_OUTBOUND else []
        if readers or writers:
            select.select(readers, writers, [], timeout)

    forwards = []
    while True:
        readers = [listener, sock]
        writers = []
        for f in forwards:
            if not f.local_eof and len(f.to_chan) < 1 << 20:
                readers.append(f.local)
            if f.to_local:
                writers.append(f.local)
        if session.block_directions() & LIBSSH2_SESSION_BLOCK_OUTBOUND:
            writers.append(sock)
        # A short timeout: libssh2 may hold data it has already read from the socket.
        ready, _, _ = select.select(readers, writers, [], 0.05)

        if listener in ready:
            try:
                local, peer = listener.accept()
            except BlockingIOError:
                local = None
            if local is not None:
                local.setblocking(False)
                chan = again(lambda: session.direct_tcpip_ex(host, int(port), peer[0], peer[1]))
                forwards.append(Forward(local, chan))

        for f in list(forwards):
            progress = True
            while progress:
                progress = False
                # local -> channel
                if not f.local_eof and len(f.to_chan) < 1 << 20:
                    try:
                        data = f.local.recv(65536)
                        if data:
                            f.to_chan += data
                        else:
                            f.local_eof = True
                        progress = True
                    except BlockingIOError:
                        pass
                if f.to_chan:
                    # `n` counts what was written even when the window ran out
                    # part way (rc EAGAIN): resume after it, as ssh2-python documents.
                    _, n = f.chan.write(f.to_chan)
                    if n > 0:
                        f.to_chan = f.to_chan[n:]
                        progress = True
                if f.local_eof and not f.to_chan and not f.eof_sent:
                    if f.chan.send_eof() != EAGAIN:
                        f.eof_sent = True
                # channel -> local
                if not f.chan_eof and len(f.to_local) < 1 << 20:
                    size, data = f.chan.read(65536)
                    if size > 0:
                        f.to_local += data
                        progress = True
                    elif size == 0 and f.chan.eof():
                        f.chan_eof = True
                if f.to_local:
                    try:
                        n = f.local.send(f.to_local)
                        f.to_local = f.to_local[n:]
                        progress = progress or n > 0
                    except BlockingIOError:
                        pass
                if f.chan_eof and not f.to_local and not f.shut_local:
                    f.local.shutdown(socket.SHUT_WR)
                    f.shut_local = True
            if f.eof_sent and f.shut_local:
                again(f.chan.close)
                f.local.close()
                forwards.remove(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("client", choices=["asyncssh", "paramiko", "ssh2"])
    parser.add_argument("mode", choices=["forward", "exec"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--known-hosts", required=True)
    parser.add_argument("--host-key", required=True)
    parser.add_argument("--rsa-sig", choices=["rsa-sha2-256", "rsa-sha2-512"])
    parser.add_argument("--ciphers")
    parser.add_argument("--target")
    parser.add_argument("--command")
    args = parser.parse_args()
    if args.mode == "forward" and not args.target:
        parser.error("forward needs --target")
    if args.mode == "exec" and args.command is None:
        parser.error("exec needs --command")
    run = {"asyncssh": run_asyncssh, "paramiko": run_paramiko, "ssh2": run_ssh2}[args.client]
    try:
        run(args)
    except Exception as e:  # noqa: BLE001 - reported to the test, which asserts on it
        log(f"error: {type(e).__module__}.{type(e).__name__}: {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
