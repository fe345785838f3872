#!/usr/bin/env python3
"""A precise, and when asked hostile, client for the bastion's AWS login
(keyboard-interactive submethod `aws-sts-v1`, protocol version 1), on asyncssh.

    aws_login_client.py --port N [--host 127.0.0.1] [--user laptop-user]
        [--bastion-name NAME] [--access-key-id K] [--secret-access-key S]
        [--session-token T] [--date-offset-seconds N] [--host-key-fingerprint FP]
        [--nonce N] [--sts-host HOST] [--public-key FILE] [--save-proof FILE]
        [--replay-proof FILE] [--timeout 20]

It exists so the tests can send proofs the real laptop binary never would:
signed in the past or the future, replayed, bound to another bastion, host key
or nonce. It answers the challenge (the JSON in the first info request's
instructions) with one proof: a SigV4-signed sts:GetCallerIdentity request
whose signed `x-bastion-login` header binds it to this login. The bastion
answers with a second info request, no prompts, whose instructions are the JSON
result, then fails the authentication (that is expected). The result is
printed as one line on stdout (exit 0, whatever it says); exit 2 if none came.
Diagnostics go to stderr. Credentials default to AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.
"""

import argparse
import asyncio
import base64
import datetime
import hashlib
import json
import os
import sys

import asyncssh

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sts_standin  # noqa: E402  (the SigV4 signer shared with the STS stand-in)

BODY = "Action=GetCallerIdentity&Version=2011-06-15"
CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"


def note(text):
    print(text, file=sys.stderr, flush=True)


def compact(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def fingerprint(public_key_line):
    """OpenSSH's SHA256 fingerprint of an `ALG BASE64 [comment]` line."""
    blob = base64.b64decode(public_key_line.split()[1], validate=True)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def make_proof(args, challenge, host_key_fp, public_key):
    sts_host = args.sts_host or challenge["sts_host"]
    when = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=args.date_offset_seconds)
    amzdate = when.strftime("%Y%m%dT%H%M%SZ")
    binding = (f"v1 bastion={args.bastion_name or args.host}; "
               f"host-key={args.host_key_fingerprint or host_key_fp}; key={fingerprint(public_key)}; "
               f"nonce={args.nonce or challenge['nonce']}")
    headers = [("host", sts_host), ("content-type", CONTENT_TYPE), ("x-amz-date", amzdate)]
    if args.session_token:
        headers.append(("x-amz-security-token", args.session_token))
    headers.append(("x-bastion-login", binding))
    auth = sts_standin.authorization("POST", "/", [], headers, BODY.encode(), args.access_key_id,
                                     args.secret_access_key, challenge["sts_region"], amzdate)
    headers.append(("authorization", auth))
    return compact({"version": 1, "public_key": public_key, "method": "POST",
                    "headers": [list(h) for h in headers], "body": BODY})


def try_keyboard_interactive_unadvertised():
    """bastion-sshd never lists keyboard-interactive (so stock ssh never prompts);
    `bastion login` asks for it anyway, as RFC 4252 allows. asyncssh only tries
    methods the server lists, so add it to every list the server sends."""
    from asyncssh.connection import SSHConnection
    from asyncssh.constants import MSG_USERAUTH_FAILURE
    from asyncssh.packet import Boolean, NameList, SSHPacket

    original = SSHConnection._packet_handlers[MSG_USERAUTH_FAILURE]

    def patched(self, pkttype, pktid, packet):
        methods = list(packet.get_namelist())
        partial = packet.get_boolean()
        packet.check_end()
        if b"keyboard-interactive" not in methods:
            methods.append(b"keyboard-interactive")
        return original(self, pkttype, pktid, SSHPacket(NameList(methods) + Boolean(partial)))

    SSHConnection._packet_handlers[MSG_USERAUTH_FAILURE] = patched


class LoginClient(asyncssh.SSHClient):
    def __init__(self, args, public_key):
        self.args, self.public_key = args, public_key
        self.conn = self.challenge = self.result = None
        self.attempted = False

    def connection_made(self, conn):
        self.conn = conn

    def kbdint_auth_requested(self):
        # asyncssh retries keyboard-interactive after each failure while the
        # server still lists it; one attempt only, then give up (PermissionDenied).
        if self.attempted:
            return None
        self.attempted = True
        return "aws-sts-v1"

    def kbdint_challenge_received(self, name, instructions, lang, prompts):
        note(f"info request name={name!r} prompts={len(prompts)} instructions={instructions}")
        if not prompts:
            if self.result is None:
                self.result = instructions
            return []
        if self.challenge is not None or len(prompts) != 1:
            note("unexpected info request; giving up")
            return None
        try:
            self.challenge = json.loads(instructions)
        except ValueError:
            note("the challenge is not JSON; giving up")
            return None
        # The key exchange is over by now, so the host key is known (known_hosts=None
        # skips its validation; validate_server_host_key() still records it).
        host_key = self.conn.get_server_host_key()
        host_key_fp = host_key.get_fingerprint("sha256") if host_key else "SHA256:unknown"
        note(f"host key {host_key_fp}")
        try:
            if self.args.replay_proof:
                with open(self.args.replay_proof) as f:
                    proof = f.read().rstrip("\n")
            else:
                proof = make_proof(self.args, self.challenge, host_key_fp, self.public_key)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            note(f"cannot make the proof: {type(e).__name__}: {e}")
            return None
        if self.args.save_proof:
            with open(self.args.save_proof, "w") as f:
                f.write(proof + "\n")
        return [proof]


async def login(args, client):
    try_keyboard_interactive_unadvertised()
    conn = await asyncssh.connect(
        args.host, args.port, username=args.user, client_factory=lambda: client,
        known_hosts=None, config=[], client_keys=None, agent_path=None, password=None,
        public_key_auth=False, password_auth=False, host_based_auth=False,
        gss_auth=False, gss_kex=False, kbdint_auth=True, preferred_auth="keyboard-interactive")
    note("authentication succeeded (unexpected)")
    conn.close()


def main():
    env = os.environ.get
    p = argparse.ArgumentParser(description="Log in to the bastion with an AWS proof (tests only).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default="laptop-user")
    p.add_argument("--bastion-name", help="the bastion name bound in the proof (default: --host)")
    p.add_argument("--access-key-id", default=env("AWS_ACCESS_KEY_ID"))
    p.add_argument("--secret-access-key", default=env("AWS_SECRET_ACCESS_KEY"))
    p.add_argument("--session-token", default=env("AWS_SESSION_TOKEN"))
    p.add_argument("--date-offset-seconds", type=int, default=0, help="sign as if N seconds ago")
    p.add_argument("--host-key-fingerprint", help="bind this host key instead of the one seen")
    p.add_argument("--nonce", help="bind this nonce instead of the challenge's")
    p.add_argument("--sts-host", help="host header (and signed host) instead of the challenge's")
    p.add_argument("--public-key", help="file holding the OpenSSH public key line to send")
    p.add_argument("--save-proof", help="write the proof JSON sent to this file")
    p.add_argument("--replay-proof", help="send this file's proof verbatim")
    p.add_argument("--timeout", type=float, default=20)
    args = p.parse_args()
    if not args.replay_proof and not (args.access_key_id and args.secret_access_key):
        p.error("AWS credentials are needed (--access-key-id/--secret-access-key or the environment)")
    if args.public_key:
        with open(args.public_key) as f:
            public_key = next(line.strip() for line in f if line.strip())
    else:
        key = asyncssh.generate_private_key("ssh-ed25519")
        public_key = key.export_public_key("openssh").decode().strip()
    client = LoginClient(args, public_key)
    try:
        asyncio.run(asyncio.wait_for(login(args, client), args.timeout))
    except asyncssh.PermissionDenied as e:
        note(f"authentication failed, as expected: {e}")
    except asyncio.TimeoutError:
        note(f"timed out after {args.timeout} s")
    except (OSError, asyncssh.Error) as e:
        note(f"connection failed: {type(e).__name__}: {e}")
    if client.result is None:
        note("no result received" + ("" if client.challenge else " (and no challenge)"))
        sys.exit(2)
    print(client.result, flush=True)


if __name__ == "__main__":
    main()
