#!/usr/bin/env python3
"""A stand-in for AWS STS's GetCallerIdentity, for the AWS login tests.

    python3 tests/sts_standin.py --identities FILE [--listen 127.0.0.1:0]
                                 [--log FILE] [--max-age-seconds 900]
    python3 tests/sts_standin.py --self-test

Why it is faked: real STS cannot run in the tests, and moto's STS does not
verify signatures (it answers any request). This one verifies SigV4 exactly,
header and query (presigned) forms, against test secrets from --identities
(a JSON list of {"access_key_id", "secret_access_key", "session_token",
"arn", "account", "user_id"}), and answers like the real service, in its XML
shape and with its error codes. It prints `listening on HOST:PORT` once, then
serves until killed; --log appends one JSON line per request received.
--self-test checks the verifier against botocore's signer (the server itself
needs only the standard library).
"""

import argparse
import datetime
import hashlib
import hmac
import json
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, parse_qsl, quote
from xml.sax.saxutils import escape

NS = "https://sts.amazonaws.com/doc/2011-06-15/"
ALGORITHM = "AWS4-HMAC-SHA256"
BAD_TOKEN = "The security token included in the request is invalid."
MISMATCH = ("The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. "
            "Consult the service documentation for details.")


def header_map(headers):
    """{lower-case name: values joined by ','} from a dict or (name, value) pairs."""
    merged = {}
    for name, value in (headers.items() if isinstance(headers, dict) else headers):
        merged.setdefault(name.lower(), []).append(value)
    return {name: ",".join(values) for name, values in merged.items()}


def uri_encode(text):
    return quote(text, safe="-_.~")


def canonical_request(method, path, query_pairs, headers, signed_headers, payload_hash):
    """The SigV4 canonical request; headers is a header_map(), signed_headers a list."""
    query = "&".join(sorted(f"{uri_encode(k)}={uri_encode(v)}" for k, v in query_pairs))
    lines = "".join(f"{h}:{' '.join(headers[h].split())}\n" for h in signed_headers)
    return "\n".join([method, quote(path, safe="/~"), query, lines,
                      ";".join(signed_headers), payload_hash])


def signing_key(secret, date, region, service="sts"):
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signature(secret, amzdate, scope, creq):
    _date, region, service, _ = scope.split("/")
    to_sign = "\n".join([ALGORITHM, amzdate, scope, hashlib.sha256(creq.encode()).hexdigest()])
    return hmac.new(signing_key(secret, amzdate[:8], region, service), to_sign.encode(),
                    hashlib.sha256).hexdigest()


def authorization(method, path, query_pairs, headers, body, key_id, secret, region, amzdate):
    """An Authorization header value signing every header in `headers` (header form)."""
    hmap = header_map(headers)
    signed = sorted(hmap)
    scope = f"{amzdate[:8]}/{region}/sts/aws4_request"
    creq = canonical_request(method, path, query_pairs, hmap, signed,
                             hashlib.sha256(body).hexdigest())
    return (f"{ALGORITHM} Credential={key_id}/{scope}, SignedHeaders={';'.join(signed)}, "
            f"Signature={signature(secret, amzdate, scope, creq)}")


def verify(method, path, query, headers, body, identities, now, max_age=900):
    """(status, code, message, identity) for one request, as STS would judge it.
    query is the raw query string, headers a dict or pairs, body bytes, identities a
    list of identity dicts, now a Unix time. code is None on success."""
    def deny(status, code, message):
        return status, code, message, None
    hmap, pairs = header_map(headers), parse_qsl(query, keep_blank_values=True)
    qmap = {k: v for k, v in pairs}
    if "X-Amz-Signature" in qmap:
        parts = {"Credential": qmap.get("X-Amz-Credential", ""), "Signature": qmap["X-Amz-Signature"],
                 "SignedHeaders": qmap.get("X-Amz-SignedHeaders", "")}
        algorithm, amzdate = qmap.get("X-Amz-Algorithm"), qmap.get("X-Amz-Date", "")
        token, window = qmap.get("X-Amz-Security-Token"), qmap.get("X-Amz-Expires", str(max_age))
        if not window.isdigit():
            return deny(400, "IncompleteSignature", "X-Amz-Expires must be a number of seconds.")
        window = int(window)
        pairs = [(k, v) for k, v in pairs if k != "X-Amz-Signature"]
    elif "authorization" in hmap:
        algorithm, _, rest = hmap["authorization"].partition(" ")
        parts = dict(p.strip().partition("=")[::2] for p in rest.split(","))
        amzdate, token, window = hmap.get("x-amz-date", ""), hmap.get("x-amz-security-token"), max_age
    else:
        return deny(403, "MissingAuthenticationToken", "Request is missing Authentication Token")
    if algorithm != ALGORITHM or not all(parts.get(k) for k in ("Credential", "SignedHeaders", "Signature")):
        return deny(400, "IncompleteSignature", "The request signature does not conform to AWS standards.")
    key_id, _, scope = parts["Credential"].partition("/")
    signed = parts["SignedHeaders"].split(";")
    try:
        when = datetime.datetime.strptime(amzdate, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return deny(400, "IncompleteSignature", "Date must be in ISO-8601 'basic format'. "
                    f"Got '{amzdate}'. See http://en.wikipedia.org/wiki/ISO_8601")
    scope_parts = scope.split("/")
    if len(scope_parts) != 4 or scope_parts[0] != amzdate[:8] or scope_parts[2] != "sts" \
            or scope_parts[3] != "aws4_request":
        return deny(403, "SignatureDoesNotMatch", f"Credential should be scoped correctly: '{scope}'.")
    if "host" not in signed:
        return deny(403, "SignatureDoesNotMatch", "'Host' must be a 'SignedHeader' in the AWS Authorization.")
    fmt = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    signed_at = when.timestamp()
    if now > signed_at + window:
        return deny(403, "SignatureDoesNotMatch", f"Signature expired: {amzdate} is now earlier than "
                    f"{fmt(now - window)} ({fmt(now)} - {window // 60} min.)")
    if now < signed_at - max_age:
        return deny(403, "SignatureDoesNotMatch", f"Signature not yet current: {amzdate} is still later "
                    f"than {fmt(now + max_age)} ({fmt(now)} + {max_age // 60} min.)")
    identity = next((i for i in identities if i["access_key_id"] == key_id), None)
    if identity is None or (identity.get("session_token") or None) != (token or None) \
            or (key_id.startswith("ASIA") and not token):
        return deny(403, "InvalidClientTokenId", BAD_TOKEN)
    if any(h not in hmap for h in signed):
        return deny(403, "SignatureDoesNotMatch", MISMATCH)
    payload_hash = hashlib.sha256(body).hexdigest()
    if hmap.get("x-amz-content-sha256", payload_hash) != payload_hash:  # UNSIGNED-PAYLOAD too
        return deny(403, "SignatureDoesNotMatch", MISMATCH)
    creq = canonical_request(method, path, pairs, hmap, signed, payload_hash)
    if not hmac.compare_digest(signature(identity["secret_access_key"], amzdate, scope, creq).encode(),
                               parts["Signature"].encode()):
        return deny(403, "SignatureDoesNotMatch", MISMATCH)
    params = {k: v[-1] for k, v in parse_qs(query).items() if not k.startswith("X-Amz-")}
    params.update({k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()})
    action, version = params.get("Action"), params.get("Version")
    if action != "GetCallerIdentity":
        return deny(400, "InvalidAction", f"Could not find operation {action} for version {version}")
    if version is None:
        return deny(400, "MissingParameter", "The request must contain the parameter Version")
    if version != "2011-06-15":
        return deny(400, "InvalidParameterValue", f"Could not find operation {action} for version {version}")
    return 200, None, None, identity


def response_xml(status, code, message, identity, request_id):
    if code is None:
        return (f'<GetCallerIdentityResponse xmlns="{NS}">\n  <GetCallerIdentityResult>\n'
                f'    <Arn>{escape(identity["arn"])}</Arn>\n    <UserId>{escape(identity["user_id"])}</UserId>\n'
                f'    <Account>{escape(identity["account"])}</Account>\n  </GetCallerIdentityResult>\n'
                f'  <ResponseMetadata>\n    <RequestId>{request_id}</RequestId>\n  </ResponseMetadata>\n'
                f'</GetCallerIdentityResponse>\n')
    kind = "Sender" if status < 500 else "Receiver"
    return (f'<ErrorResponse xmlns="{NS}">\n  <Error>\n    <Type>{kind}</Type>\n'
            f'    <Code>{escape(code)}</Code>\n    <Message>{escape(message)}</Message>\n  </Error>\n'
            f'  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n')


def serve(identities, listen, log_path, max_age, tls=None):
    host, _, port = listen.rpartition(":")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_any(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path, _, query = self.path.partition("?")
            headers = list(self.headers.items())
            status, code, message, identity = verify(self.command, path, query, headers, body,
                                                     identities, datetime.datetime.now().timestamp(), max_age)
            request_id = str(uuid.uuid4())
            reply = response_xml(status, code, message, identity, request_id).encode()
            self.send_response(status)
            for name, value in (("Content-Type", "text/xml"), ("Content-Length", str(len(reply))),
                                ("x-amzn-RequestId", request_id)):
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply)
            if log_path:
                entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                         "method": self.command, "path": path, "query": query,
                         "headers": {k.lower(): v for k, v in headers},
                         "body": body.decode("utf-8", "replace"), "status": status, "code": code,
                         "arn": identity["arn"] if identity else None}
                with lock, open(log_path, "a") as log:
                    log.write(json.dumps(entry) + "\n")
                    log.flush()

        do_GET = do_POST = handle_any

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, int(port)), Handler)
    if tls:  # (cert, key): HTTPS, as the real endpoint, to test the bastion's TLS client
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening on {server.server_address[0]}:{server.server_address[1]}", flush=True)
    server.serve_forever()


def self_test():
    """verify() against botocore's SigV4 signer, header and query forms."""
    import time
    from botocore.auth import SigV4Auth, SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    url, body = "https://sts.us-east-1.amazonaws.com/", "Action=GetCallerIdentity&Version=2011-06-15"
    ids = [dict(access_key_id="AKIAEXAMPLELONGTERM1", secret_access_key="long-term-secret", session_token=None,
                arn="arn:aws:iam::111122223333:user/alice", account="111122223333", user_id="AIDAEXAMPLEALICE"),
           dict(access_key_id="ASIAEXAMPLETEMPORARY", secret_access_key="temporary-secret", session_token="tok/en+=",
                arn="arn:aws:sts::111122223333:assumed-role/Dev/bob", account="111122223333",
                user_id="AROAEXAMPLEDEV:bob")]
    failures = []

    def check(label, expected_code, req, now_shift=0, secret=None, drop=None, tamper=None):
        parts = req.url.partition("?")
        headers = {"host": "sts.us-east-1.amazonaws.com", **dict(req.headers.items())}
        query = parts[2]
        if drop:
            headers = {k: v for k, v in headers.items() if k.lower() != drop}
            query = "&".join(p for p in query.split("&") if not p.startswith(drop + "="))
        if tamper:
            headers[tamper] = headers[tamper] + "x"
        data = req.body if isinstance(req.body, bytes) else (req.body or "").encode()
        status, code, message, identity = verify(req.method, parts[0].split(".com", 1)[1] or "/", query,
                                                 headers, data, ids, time.time() + now_shift)
        print(f"  {label}: {status} {code or identity['arn']}{' (' + message + ')' if message else ''}")
        if code != expected_code:
            failures.append(f"{label}: expected {expected_code}, got {code} ({message})")

    for ident in ids:
        for form in ("header", "query"):
            def signed(secret=ident["secret_access_key"], key_id=ident["access_key_id"]):
                data = body if form == "header" else dict(parse_qsl(body))  # botocore moves it to the query
                req = AWSRequest(method="POST", url=url, data=data, headers={
                    "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                    "x-bastion-login": "v1 test"})
                creds = Credentials(key_id, secret, ident["session_token"])
                if form == "header":
                    SigV4Auth(creds, "sts", "us-east-1").add_auth(req)
                else:
                    SigV4QueryAuth(creds, "sts", "us-east-1", expires=600).add_auth(req)
                return req.prepare()
            name = f"{ident['access_key_id'][:4]} {form}"
            check(f"{name} valid", None, signed())
            check(f"{name} wrong secret", "SignatureDoesNotMatch", signed(secret="not-the-secret"))
            check(f"{name} tampered x-bastion-login", "SignatureDoesNotMatch", signed(), tamper="x-bastion-login")
            check(f"{name} stale (signed 20 min ago)", "SignatureDoesNotMatch", signed(), now_shift=1200)
            check(f"{name} from the future (20 min)", "SignatureDoesNotMatch", signed(), now_shift=-1200)
            check(f"{name} unknown key", "InvalidClientTokenId", signed(key_id="AKIAUNKNOWNUNKNOWN00"))
            if ident["session_token"]:
                token_name = "x-amz-security-token" if form == "header" else "X-Amz-Security-Token"
                check(f"{name} missing token", "InvalidClientTokenId", signed(), drop=token_name)
            if form == "header":
                req = signed()
                hdrs = dict(req.headers.items())
                mine = authorization("POST", "/", [], {"host": "sts.us-east-1.amazonaws.com", **{
                    k: v for k, v in hdrs.items() if k.lower() not in ("authorization", "content-length")}}, body.encode(),
                    ident["access_key_id"], ident["secret_access_key"], "us-east-1", hdrs["X-Amz-Date"])
                print(f"  {name} own signer matches botocore: {mine == hdrs['Authorization']}")
                if mine != hdrs["Authorization"]:
                    failures.append(f"{name}: own signer {mine!r} != botocore {hdrs['Authorization']!r}")
    if failures:
        sys.exit("self-test FAILED:\n  " + "\n  ".join(failures))
    print("self-test ok")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--identities")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--log")
    parser.add_argument("--max-age-seconds", type=int, default=900)
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (and --tls-key)")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    if not args.identities:
        parser.error("--identities is required")
    with open(args.identities) as f:
        identities = json.load(f)
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    serve(identities, args.listen, args.log, args.max_age_seconds, tls)


if __name__ == "__main__":
    main()
