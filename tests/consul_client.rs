//! The typed Consul client against a real Consul agent.

mod common;

use std::time::{Duration, Instant};

use common::*;
use servant::consul::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn client(addr: &str) -> Client {
    Client::new(&ClientConfig {
        address: Some(addr.to_string()),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn kv_binary_cas_flags_keys_and_locks() {
    let c = ConsulDev::start();
    rt().block_on(async {
        let k = client(&c.addr());
        let q = QueryOptions::default();
        // A missing key is not an error.
        let (none, meta) = k.kv_get("nope", &q).await.unwrap();
        assert!(none.is_none());
        assert!(meta.index > 0, "404 still carries X-Consul-Index");
        assert!(k.kv_get_raw("nope").await.unwrap().is_none());
        // Binary values round-trip.
        let bin: Vec<u8> = (0..=255u8).collect();
        assert!(k
            .kv_put(
                "b/bin",
                &bin,
                &KvPutOptions {
                    flags: Some(42),
                    ..Default::default()
                }
            )
            .await
            .unwrap());
        let (e, _) = k.kv_get("b/bin", &q).await.unwrap();
        let e = e.unwrap();
        assert_eq!(e.value, bin);
        assert_eq!(e.flags, 42);
        assert_eq!(k.kv_get_raw("b/bin").await.unwrap().unwrap(), bin);
        // CAS: 0 means only if absent.
        assert!(!k
            .kv_put(
                "b/bin",
                b"x",
                &KvPutOptions {
                    cas: Some(0),
                    ..Default::default()
                }
            )
            .await
            .unwrap());
        assert!(k
            .kv_put(
                "b/bin",
                b"x",
                &KvPutOptions {
                    cas: Some(e.modify_index),
                    ..Default::default()
                }
            )
            .await
            .unwrap());
        assert!(!k
            .kv_delete("b/bin", false, Some(e.modify_index))
            .await
            .unwrap());
        // Keys with a separator, recurse.
        for key in ["t/a/1", "t/a/2", "t/b", "t/c/d/e"] {
            k.kv_put(key, b"v", &KvPutOptions::default()).await.unwrap();
        }
        let (keys, _) = k.kv_keys("t/", Some("/"), &q).await.unwrap();
        assert_eq!(keys, vec!["t/a/", "t/b", "t/c/"]);
        let (all, _) = k.kv_list("t/", &q).await.unwrap();
        assert_eq!(all.len(), 4);
        assert!(k.kv_delete("t/a/", true, None).await.unwrap());
        assert_eq!(k.kv_list("t/", &q).await.unwrap().0.len(), 2);
        // Acquire/release by two sessions, and lock-delay.
        let s1 = k
            .session_create(&SessionRequest {
                name: "one".into(),
                ttl: Some(Duration::from_secs(10)),
                lock_delay: Some(Duration::from_secs(2)),
                ..Default::default()
            })
            .await
            .unwrap();
        let s2 = k
            .session_create(&SessionRequest {
                name: "two".into(),
                lock_delay: Some(Duration::ZERO),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(k
            .kv_put(
                "lock",
                b"1",
                &KvPutOptions {
                    acquire: Some(s1.clone()),
                    ..Default::default()
                }
            )
            .await
            .unwrap());
        assert!(!k
            .kv_put(
                "lock",
                b"2",
                &KvPutOptions {
                    acquire: Some(s2.clone()),
                    ..Default::default()
                }
            )
            .await
            .unwrap());
        let (l, _) = k.kv_get("lock", &q).await.unwrap();
        assert_eq!(l.as_ref().unwrap().holder(), Some(s1.as_str()));
        assert_eq!(l.unwrap().lock_index, 1);
        k.session_destroy(&s1).await.unwrap();
        assert!(
            !k.kv_put(
                "lock",
                b"2",
                &KvPutOptions {
                    acquire: Some(s2.clone()),
                    ..Default::default()
                }
            )
            .await
            .unwrap(),
            "lock-delay holds"
        );
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(k
            .kv_put(
                "lock",
                b"2",
                &KvPutOptions {
                    acquire: Some(s2.clone()),
                    ..Default::default()
                }
            )
            .await
            .unwrap());
        assert!(k
            .kv_put(
                "lock",
                b"2",
                &KvPutOptions {
                    release: Some(s2.clone()),
                    ..Default::default()
                }
            )
            .await
            .unwrap());
        assert!(k
            .kv_get("lock", &q)
            .await
            .unwrap()
            .0
            .unwrap()
            .holder()
            .is_none());
    });
}

#[test]
fn txn_sessions_and_blocking_queries() {
    let c = ConsulDev::start();
    rt().block_on(async {
        let k = client(&c.addr());
        let q = QueryOptions::default();
        let s = k
            .session_create(&SessionRequest {
                name: "held".into(),
                behavior: SessionBehavior::Delete,
                ttl: Some(Duration::from_secs(10)),
                checks: Some(vec!["serfHealth".into()]),
                ..Default::default()
            })
            .await
            .unwrap();
        let info = k.session_info(&s, &q).await.unwrap().0.unwrap();
        assert_eq!(info.behavior, "delete");
        assert_eq!(info.ttl, "10s");
        assert!(k.session_renew(&s).await.unwrap().is_some());
        assert_eq!(k.session_node(&c.node, &q).await.unwrap().0.len(), 1);
        assert!(k
            .session_list(&q)
            .await
            .unwrap()
            .0
            .iter()
            .any(|e| e.id == s));
        // A transaction commits all or nothing.
        let ok = k
            .txn(&[
                TxnOp::Kv(TxnKvOp::Set {
                    key: "x/1".into(),
                    value: b"a".to_vec(),
                    flags: 0,
                }),
                TxnOp::Kv(TxnKvOp::Lock {
                    key: "x/2".into(),
                    value: b"b".to_vec(),
                    flags: 7,
                    session: s.clone(),
                }),
            ])
            .await
            .unwrap();
        assert!(ok.committed());
        let bad = k
            .txn(&[
                TxnOp::Kv(TxnKvOp::Set {
                    key: "x/3".into(),
                    value: b"c".to_vec(),
                    flags: 0,
                }),
                TxnOp::Kv(TxnKvOp::CheckIndex {
                    key: "x/missing".into(),
                    index: 1,
                }),
            ])
            .await
            .unwrap();
        match bad {
            TxnOutcome::RolledBack(errs) => assert_eq!(errs[0].op_index, 1),
            other => panic!("{other:?}"),
        }
        assert!(k.kv_get("x/3", &q).await.unwrap().0.is_none());
        // Behaviour delete: destroying the session deletes the key it held.
        k.session_destroy(&s).await.unwrap();
        assert!(k.kv_get("x/2", &q).await.unwrap().0.is_none());
        assert!(
            k.session_info(&s, &q).await.unwrap().0.is_none(),
            "a gone session is None, not an error"
        );
        assert!(k.session_renew(&s).await.unwrap().is_none());
        // Blocking query: waits, then wakes on a write.
        let (_, meta) = k.kv_list("w/", &q).await.unwrap();
        let k2 = k.clone();
        let t0 = Instant::now();
        let waiter = tokio::spawn(async move {
            k2.kv_list(
                "w/",
                &QueryOptions::blocking(meta.index, Duration::from_secs(20)),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        k.kv_put("w/a", b"1", &KvPutOptions::default())
            .await
            .unwrap();
        let (v, m2) = waiter.await.unwrap().unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert_eq!(v.len(), 1);
        assert!(m2.index > meta.index);
        assert!(m2.known_leader);
        // A short wait returns with the same index when nothing changes.
        let (_, m3) = k
            .kv_list(
                "w/",
                &QueryOptions::blocking(m2.index, Duration::from_millis(200)),
            )
            .await
            .unwrap();
        assert_eq!(m3.index, m2.index);
    });
}

#[test]
fn agent_catalog_health_events_status() {
    let c = ConsulDev::start();
    rt().block_on(async {
        let k = client(&c.addr());
        let q = QueryOptions::default();
        assert_eq!(k.agent_node_name().await.unwrap(), c.node);
        assert!(k
            .agent_members()
            .await
            .unwrap()
            .iter()
            .any(|m| m.name == c.node && m.is_alive()));
        assert!(!k.status_leader().await.unwrap().is_empty());
        assert_eq!(k.status_peers().await.unwrap().len(), 1);
        k.agent_service_register(&AgentServiceRegistration {
            id: Some("web1".into()),
            name: "web".into(),
            tags: vec!["v1".into()],
            port: Some(8080),
            checks: vec![AgentCheckRegistration {
                check_id: Some("web1-ttl".into()),
                name: Some("ttl".into()),
                ttl: Some("30s".into()),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(k.agent_services().await.unwrap().contains_key("web1"));
        k.agent_check_update("web1-ttl", CheckUpdate::Pass, Some("fine"))
            .await
            .unwrap();
        let passing = wait_async(|| async {
            Some(k.health_service("web", true, &q).await.ok()?.0).filter(|v| v.len() == 1)
        })
        .await;
        assert_eq!(passing[0].node.node, c.node);
        k.agent_check_update("web1-ttl", CheckUpdate::Warn, None)
            .await
            .unwrap();
        let warn = wait_async(|| async {
            Some(k.health_state("warning", &q).await.ok()?.0).filter(|v| !v.is_empty())
        })
        .await;
        assert_eq!(warn[0].check_id, "web1-ttl");
        k.agent_check_update("web1-ttl", CheckUpdate::Fail, Some("down"))
            .await
            .unwrap();
        wait_async(|| async {
            Some(k.health_service("web", true, &q).await.ok()?.0).filter(|v| v.is_empty())
        })
        .await;
        assert!(k
            .health_checks("web", &q)
            .await
            .unwrap()
            .0
            .iter()
            .any(|c| c.status == "critical"));
        assert!(k
            .health_node(&c.node, &q)
            .await
            .unwrap()
            .0
            .iter()
            .any(|c| c.check_id == "serfHealth"));
        assert!(k.catalog_services(&q).await.unwrap().0.contains_key("web"));
        assert_eq!(
            k.catalog_service("web", Some("v1"), &q).await.unwrap().0[0].service_port,
            8080
        );
        assert!(k
            .catalog_service("web", Some("v2"), &q)
            .await
            .unwrap()
            .0
            .is_empty());
        assert!(k
            .catalog_nodes(&q)
            .await
            .unwrap()
            .0
            .iter()
            .any(|n| n.node == c.node));
        k.agent_service_deregister("web1").await.unwrap();
        assert!(!k.agent_services().await.unwrap().contains_key("web1"));
        let ev = k.event_fire("deploy", b"\x00payload").await.unwrap();
        let (evs, _) = k.event_list(Some("deploy"), &q).await.unwrap();
        assert!(evs
            .iter()
            .any(|e| e.id == ev.id && e.payload == b"\x00payload"));
        // Joining ourselves is accepted; force-leave of an unknown node is an error with a reason.
        k.agent_join(&c.ip).await.unwrap();
        let e = k.agent_force_leave("no-such-node").await;
        assert!(e.is_ok() || e.unwrap_err().to_string().contains("no-such-node"));
    });
}

async fn wait_async<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "condition not reached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn tls_with_ca_and_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let consul = consul_bin();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&consul)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "consul {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["tls", "ca", "create"]);
    run(&[
        "tls",
        "cert",
        "create",
        "-server",
        "-additional-ipaddress=127.0.0.1",
    ]);
    run(&["tls", "cert", "create", "-client"]);
    let p = |f: &str| dir.path().join(f).display().to_string();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let net = subnet();
    let ip = format!("{net}.2");
    let hcl = format!(
        r#"ports {{ https = {port} }} verify_incoming = true verify_outgoing = true ca_file = "{}" cert_file = "{}" key_file = "{}""#,
        p("consul-agent-ca.pem"),
        p("dc1-server-consul-0.pem"),
        p("dc1-server-consul-0-key.pem")
    );
    let mut cmd = std::process::Command::new(&consul);
    cmd.args([
        "agent",
        "-dev",
        "-bind",
        &ip,
        "-client",
        "127.0.0.1",
        "-node",
        "tls",
        "-http-port",
        "-1",
        "-dns-port",
        "-1",
        "-hcl",
        &hcl,
    ]);
    cmd.args(["-serf-lan-bind", &ip]);
    let _p = spawn_logged("consul-tls", &mut cmd, &dir.path().join("consul.log"));
    rt().block_on(async {
        let cfg = ClientConfig {
            address: Some(format!("https://127.0.0.1:{port}")),
            ca_cert: Some(p("consul-agent-ca.pem")),
            client_cert: Some(p("dc1-client-consul-0.pem")),
            client_key: Some(p("dc1-client-consul-0-key.pem")),
            ..Default::default()
        };
        let k = Client::new(&cfg).unwrap();
        let leader =
            wait_async(|| async { k.status_leader().await.ok().filter(|l| !l.is_empty()) }).await;
        assert!(!leader.is_empty());
        assert!(k
            .kv_put("tls", b"ok", &KvPutOptions::default())
            .await
            .unwrap());
        // Without the client certificate the server refuses the connection.
        let no_cert = Client::new(&ClientConfig {
            address: cfg.address.clone(),
            ca_cert: cfg.ca_cert.clone(),
            ..Default::default()
        })
        .unwrap();
        assert!(no_cert.kv_get_raw("tls").await.is_err());
        // Half a client identity is a configuration error.
        assert!(Client::new(&ClientConfig {
            client_cert: cfg.client_cert.clone(),
            ..Default::default()
        })
        .is_err());
    });
}
