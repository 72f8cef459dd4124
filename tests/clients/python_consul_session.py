"""A scripted session of Debian's python3-consul (0.7.1) against a Consul HTTP API.

Usage: python3 python_consul_session.py HOST PORT. Exits non-zero on the first mismatch.
"""
import sys
import threading
import time

import consul

host, port = sys.argv[1], int(sys.argv[2])
c = consul.Consul(host=host, port=port)


def check(cond, what):
    if not cond:
        print("FAILED: " + what, file=sys.stderr)
        sys.exit(1)
    print("ok: " + what)


check(c.kv.put("py/a", "hello") is True, "kv.put")
index, data = c.kv.get("py/a")
check(data["Value"] == b"hello" and int(index) > 0, "kv.get")
check(c.kv.get("py/missing")[1] is None, "missing key is None")
check(c.kv.put("py/a", "again", cas=0) is False, "cas=0 on an existing key")
check(c.kv.put("py/b", b"\x00\xff binary", flags=7) is True, "binary put with flags")
_, b = c.kv.get("py/b")
check(b["Value"] == b"\x00\xff binary" and b["Flags"] == 7, "binary get")
_, keys = c.kv.get("py/", keys=True)
check(keys == ["py/a", "py/b"], "keys")
_, entries = c.kv.get("py/", recurse=True)
check(len(entries) == 2, "recurse")

sid = c.session.create(name="py", ttl=10, lock_delay=0)
check(len(sid) == 36, "session.create")
check(c.kv.put("py/lock", "mine", acquire=sid) is True, "acquire")
other = c.session.create(name="other", lock_delay=0)
check(c.kv.put("py/lock", "theirs", acquire=other) is False, "acquire by a second session")
check(c.session.renew(sid)["ID"] == sid, "session.renew")
_, info = c.session.info(sid)
check(info["Name"] == "py", "session.info")
_, listed = c.session.list()
check(sid in [s["ID"] for s in listed], "session.list")
check(c.kv.put("py/lock", "mine", release=sid) is True, "release")
c.session.destroy(sid)
c.session.destroy(other)
check(c.session.info(sid)[1] is None, "destroyed session is gone")

# A blocking get wakes on a write.
index, _ = c.kv.get("py/a")
result = {}


def waiter():
    result["value"] = c.kv.get("py/a", index=index, wait="10s")[1]["Value"]


t = threading.Thread(target=waiter)
t.start()
time.sleep(0.3)
c.kv.put("py/a", "woken")
t.join(15)
check(result.get("value") == b"woken", "blocking get wakes on a write")

check(c.kv.delete("py/", recurse=True) is True, "delete recurse")
check(c.kv.get("py/", recurse=True)[1] is None, "tree gone")

check(c.agent.self()["Config"]["NodeName"] != "", "agent.self")
check(len(c.agent.members()) >= 1, "agent.members")
check(c.status.leader() != "", "status.leader")
_, nodes = c.catalog.nodes()
check(len(nodes) >= 1, "catalog.nodes")
check(c.agent.service.register("pyweb", service_id="pyweb1", port=8080, tags=["a"], check=consul.Check.ttl("30s")) is True, "agent.service.register")
# python3-consul 0.7.1 sends GET for ttl_pass, which Consul refuses (CONSUL-NOTES); use PUT by hand.
import requests  # noqa: E402

r = requests.put("http://%s:%d/v1/agent/check/pass/service:pyweb1" % (host, port))
check(r.status_code == 200, "check pass by PUT")
time.sleep(0.5)
_, healthy = c.health.service("pyweb", passing=True)
check(len(healthy) == 1 and healthy[0]["Service"]["Port"] == 8080, "health.service passing")
_, services = c.catalog.services()
check("pyweb" in services, "catalog.services")
# 0.7.1's agent.service.deregister also sends GET, refused by Consul 1.8; PUT by hand.
r = requests.put("http://%s:%d/v1/agent/service/deregister/pyweb1" % (host, port))
check(r.status_code == 200, "service deregister by PUT")
_, services = c.catalog.services()
check("pyweb" not in services, "service gone from the catalog")
print("all ok")
