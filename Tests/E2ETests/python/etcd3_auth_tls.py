"""python-etcd3 (PyPI `etcd3`) against a swetcd member over mutual TLS with user and password.

Usage: etcd3_auth_tls.py HOST PORT CA CERT KEY TTL_SECONDS

The member has auth enabled; user alice (password alicepw) may read and write the prefix
py/ only. Prints one `ok <check>` line per passed check; on the first failure prints
`FAIL <check>: <detail>` and exits 1. Every wait is bounded.
"""
import sys
import threading
import time

import etcd3

host, port, ca, cert, key, ttl = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6])


def client(user="alice", password="alicepw"):
    return etcd3.client(host=host, port=port, ca_cert=ca, cert_cert=cert, cert_key=key,
                        user=user, password=password, timeout=10)


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


def error_text(call):
    try:
        call()
    except Exception as e:  # grpc.RpcError or an etcd3 exception: its text is what we check
        return f"{type(e).__name__}: {e}"
    return None


c = client()
c.put("py/a", "1")
value, meta = c.get("py/a")
check("put-get", value == b"1", repr(value))

denied = error_text(lambda: c.get("other"))
check("read-denied", denied is not None and "etcdserver: permission denied" in denied, denied)
denied = error_text(lambda: c.put("other", "x"))
check("write-denied", denied is not None and "etcdserver: permission denied" in denied, denied)
wrong = error_text(lambda: client(password="wrong"))
check("wrong-password", wrong is not None and "authentication failed, invalid user ID or password" in wrong, wrong)

# Watch: events of a put made after the watch started.
events, cancel = c.watch("py/w")
seen = []


def consume():
    for event in events:
        seen.append(event)
        break


reader = threading.Thread(target=consume, daemon=True)
reader.start()
deadline = time.monotonic() + 10
while not seen and time.monotonic() < deadline:
    c.put("py/w", "hello")
    reader.join(timeout=0.2)
cancel()
check("watch", len(seen) == 1 and seen[0].value == b"hello", repr(seen))
# Lease: attach, time to live, revoke removes the key.
lease = c.lease(60)
c.put("py/leased", "x", lease=lease)
check("lease-ttl", 0 < lease.remaining_ttl <= 60, lease.remaining_ttl)
check("lease-keys", [k for k in lease.keys] == [b"py/leased"], lease.keys)
lease.revoke()
value, _ = c.get("py/leased")
check("lease-revoke", value is None, repr(value))

# Token expiry: clients that authenticated together; one unused client per round, so the
# polling does not extend their tokens. etcd's error for an expired simple token.
started = time.monotonic()
idle = [client() for _ in range(int(ttl * 4) + 12)]
in_use = client()
expired_after = None
for idle_client in idle:
    check_value, _ = in_use.get("py/a")
    if check_value != b"1":
        check("token-in-use", False, repr(check_value))
    err = error_text(lambda: idle_client.get("py/a"))
    if err is not None:
        check("token-expired-error", "etcdserver: invalid auth token" in err, err)
        expired_after = time.monotonic() - started
        break
    time.sleep(0.25)  # pacing of the rounds
check("token-expired", expired_after is not None and expired_after >= ttl, expired_after)
value, _ = in_use.get("py/a")
check("token-in-use", value == b"1", repr(value))
