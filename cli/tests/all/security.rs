//! The attacks that must fail, through a real `wasmos dev` over real TLS on
//! loopback: plaintext to a TLS master, clients that do not trust the
//! cluster CA, client certificates from another CA or out of their
//! validity, handshakes that never finish, and floods of bad connections.
//! Each checks the refusal and that the master still serves.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use wasmos_proto::v1;
use wasmos_security::client::{ClientIdentity, Target};
use wasmos_security::pki::{Pki, agent_key_and_csr};
use wasmos_security::time::OffsetDateTime;

use crate::dev::Cluster;

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The cluster still answers a listing through the CLI.
fn serving(c: &Cluster) {
    let o = c.cmd().args(["agents", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "the master stopped serving: {}", err(&o));
}

fn port(c: &Cluster) -> u16 {
    c.url.rsplit(':').next().unwrap().parse().unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A ListAgents call through `target`: Ok, or the error as text.
fn list_agents(target: &Target) -> Result<usize, String> {
    rt().block_on(async {
        let ch = target.connect().await?;
        let mut op = v1::operator_client::OperatorClient::new(ch);
        op.list_agents(v1::ListAgentsRequest::default())
            .await
            .map(|r| r.into_inner().agents.len())
            .map_err(|s| format!("{s:?}"))
    })
}

fn trusted(c: &Cluster) -> Target {
    let cfg = wasmos_security::client::ClientConfig::read(&c.config).unwrap().expect("dev wrote a client config");
    Target { url: c.url.clone(), ca_pem: cfg.ca_pem, identity: None, token: cfg.token }
}

#[test]
fn dev_serves_tls_and_writes_a_private_client_config() {
    let c = Cluster::start();
    let cfg = wasmos_security::client::ClientConfig::read(&c.config).unwrap().unwrap();
    assert_eq!(cfg.master, c.url);
    assert!(cfg.ca_pem.as_deref().is_some_and(|p| p.contains("BEGIN CERTIFICATE")));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&c.config).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert!(list_agents(&trusted(&c)).is_ok());
}

#[test]
fn plaintext_to_a_tls_master_fails() {
    let c = Cluster::start();
    let plain = format!("http://127.0.0.1:{}", port(&c));
    let o = c.cmd().args(["agents", "--master", &plain]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let t = Target { url: plain, ..Default::default() };
    assert!(list_agents(&t).is_err());
    serving(&c);
}

#[test]
fn a_client_that_does_not_trust_the_cluster_ca_fails() {
    let c = Cluster::start();
    let other = tempfile::tempdir().unwrap();
    let other_pki = Pki::load_or_create(other.path(), &[]).unwrap();
    std::fs::write(other.path().join("other-ca.pem"), &other_pki.ca_pem).unwrap();
    let o = c.cmd().args(["agents", "--ca-cert"]).arg(other.path().join("other-ca.pem")).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("cannot reach the master"), "{}", err(&o));
    // No CA at all for an https:// master: told what to pass.
    let o = c
        .cmd()
        .env("WASMOS_CONFIG", other.path().join("none.json"))
        .args(["agents", "--master", &c.url])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("--ca-cert"), "{}", err(&o));
    serving(&c);
}

/// A client certificate made for agent `id` with `pki`'s CA, valid between
/// the two times.
fn agent_identity(pki: &Pki, id: &str, from: OffsetDateTime, to: OffsetDateTime) -> ClientIdentity {
    let (key_pem, csr) = agent_key_and_csr().unwrap();
    ClientIdentity { cert_pem: pki.sign_agent_between(&csr, id, from, to).unwrap(), key_pem }
}

#[test]
fn client_certificates_from_another_ca_or_out_of_date_are_refused() {
    let c = Cluster::start();
    let now = OffsetDateTime::now_utc();
    let day = wasmos_security::time::Duration::days(1);
    let other = tempfile::tempdir().unwrap();
    let other_pki = Pki::load_or_create(other.path(), &[]).unwrap();
    let cluster_pki = Pki::load(&c.state().join("tls")).unwrap();
    let cases = [
        ("another CA", agent_identity(&other_pki, "agent-x", now - day, now + day)),
        ("expired", agent_identity(&cluster_pki, "agent-x", now - day - day, now - day)),
        ("not yet valid", agent_identity(&cluster_pki, "agent-x", now + day, now + day + day)),
    ];
    for (what, identity) in cases {
        let t = Target { identity: Some(identity), ..trusted(&c) };
        let r = list_agents(&t);
        assert!(r.is_err(), "{what}: a client certificate {what} was accepted");
    }
    // The same kind of certificate, valid and from the cluster CA, is accepted.
    let good = agent_identity(&cluster_pki, "agent-x", now - day, now + day);
    assert!(list_agents(&Target { identity: Some(good), ..trusted(&c) }).is_ok());
    serving(&c);
}

#[test]
fn handshakes_that_never_finish_are_closed_and_do_not_hold_the_master() {
    let c = Cluster::start_with(&["--tls-handshake-timeout", "1s", "--max-tls-handshakes", "32"]);
    let addr = format!("127.0.0.1:{}", port(&c));
    // Connections that say nothing: the master closes each after the timeout.
    let mut idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    serving(&c);
    let t0 = Instant::now();
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "an idle connection got {n} bytes instead of being closed");
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    // More idle connections than handshake slots: the extra ones are closed
    // at once, and once the idle ones time out the master serves again.
    let _flood: Vec<TcpStream> = (0..64).filter_map(|_| TcpStream::connect(&addr).ok()).collect();
    std::thread::sleep(Duration::from_millis(1500));
    serving(&c);
}

#[test]
fn a_thousand_bad_connections_in_a_row_leave_the_master_serving() {
    let c = Cluster::start();
    let addr = format!("127.0.0.1:{}", port(&c));
    for i in 0..1000 {
        if let Ok(mut s) = TcpStream::connect(&addr) {
            // Garbage, a plaintext HTTP/2 preface, or nothing at all.
            let _ = match i % 3 {
                0 => s.write_all(b"\x16\x03\x01\x00\x05hello"),
                1 => s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
                _ => Ok(()),
            };
        }
    }
    serving(&c);
}

// ---------------------------------------------------------------- tokens

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `wasmos token create NAME --grant G...` with the admin token; the secret.
fn token(c: &Cluster, name: &str, grants: &[&str], extra: &[&str]) -> String {
    let mut cmd = c.cmd();
    cmd.args(["token", "create", name]);
    for g in grants {
        cmd.args(["--grant", g]);
    }
    let o = cmd.args(extra).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let secret = out(&o).trim().to_string();
    assert!(secret.starts_with("wsmt_"), "{secret}");
    secret
}

/// A client command with `secret` as its token.
fn as_token(c: &Cluster, secret: &str, args: &[&str]) -> std::process::Output {
    c.cmd().args(args).args(["--token", secret]).output().unwrap()
}

fn audit_lines(c: &Cluster) -> Vec<serde_json::Value> {
    // The audit writer flushes on its own thread: give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(c.state().join("audit.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn hello() -> String {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guests/hello.wasm");
    assert!(p.exists(), "{} is missing: run `cargo xtask guests` first", p.display());
    p.to_string_lossy().into_owned()
}

#[test]
fn no_made_up_malformed_expired_or_revoked_token_gets_in() {
    let c = Cluster::start();
    // No token at all: a config with the URL and CA only.
    let bare = c.state().join("bare.json");
    let mut cfg = wasmos_security::client::ClientConfig::read(&c.config).unwrap().unwrap();
    cfg.token = None;
    cfg.write(&bare).unwrap();
    let o = c.cmd().env("WASMOS_CONFIG", &bare).args(["tasks"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("needs a token"), "{}", err(&o));

    let made_up = format!("wsmt_{}", "ab".repeat(32));
    let o = as_token(&c, &made_up, &["tasks"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("unknown or revoked token"), "{}", err(&o));
    let o = as_token(&c, "hunter2", &["tasks"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("not a wasmos token"), "{}", err(&o));

    let short = token(&c, "short", &["view:*"], &["--ttl", "1s"]);
    assert_eq!(as_token(&c, &short, &["tasks"]).status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(1500));
    let o = as_token(&c, &short, &["tasks"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("token short expired"), "{}", err(&o));

    let gone = token(&c, "gone", &["view:*"], &[]);
    assert_eq!(as_token(&c, &gone, &["tasks"]).status.code(), Some(0));
    let o = c.cmd().args(["token", "revoke", "gone"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = as_token(&c, &gone, &["tasks"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("unknown or revoked"), "{}", err(&o));

    // The refusals are in the audit log, without any secret.
    let lines = audit_lines(&c);
    assert!(lines.iter().filter(|l| l["decision"] == "deny" && l["principal"] == "unauthenticated").count() >= 4);
    let text = std::fs::read_to_string(c.state().join("audit.jsonl")).unwrap();
    for s in [&made_up, &short, &gone] {
        assert!(!text.contains(&s[5..]), "a secret is in the audit log");
    }
}

#[test]
fn revoking_a_token_closes_its_open_watch_stream() {
    let c = Cluster::start();
    let secret = token(&c, "watcher", &["view:*"], &[]);
    let t = Target { token: Some(secret), ..trusted(&c) };
    let rt = rt();
    let mut stream = rt.block_on(async {
        let mut op = v1::operator_client::OperatorClient::new(t.connect().await.unwrap());
        op.watch(v1::WatchRequest { framework_id: String::new(), from: None }).await.unwrap().into_inner()
    });
    let o = c.cmd().args(["token", "revoke", "watcher"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let ended = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(s) => return Some(s),
                }
            }
        })
        .await
    });
    let status = ended.expect("the stream was not closed within 10 s").expect("closed with an error");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("watcher was revoked"), "{status:?}");
}

#[test]
fn grants_bound_what_a_token_does_and_sees() {
    let c = Cluster::start();
    let h = hello();
    // The admin's batch task, in role batch.
    let o = c.cmd().args(["submit", "--wait", &h]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let id = out(&o).lines().last().unwrap().split_whitespace().next().unwrap().to_string();

    // view:a sees nothing of role batch: not listed, not found, no logs.
    let a_viewer = token(&c, "a-viewer", &["view:a"], &[]);
    let o = as_token(&c, &a_viewer, &["tasks", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o).trim(), "", "view:a listed batch tasks: {}", out(&o));
    let o = as_token(&c, &a_viewer, &["logs", &id]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("no task"), "{}", err(&o));
    // view:batch does.
    let b_viewer = token(&c, "b-viewer", &["view:batch"], &[]);
    let o = as_token(&c, &b_viewer, &["tasks", "--json"]);
    assert!(out(&o).contains(&id), "{}", out(&o));
    assert_eq!(as_token(&c, &b_viewer, &["logs", &id]).status.code(), Some(0));

    // submit:a may not submit to batch; the message names token, action, role and grants.
    let a_submitter = token(&c, "a-submitter", &["submit:a"], &[]);
    let o = as_token(&c, &a_submitter, &["submit", &h]);
    assert_eq!(o.status.code(), Some(2));
    let e = err(&o);
    assert!(
        e.contains("token a-submitter may not submit in role batch (it has submit:a)") && e.contains("submit:batch"),
        "{e}"
    );
    // quota, reserve and tokens need their grant.
    let o = as_token(&c, &b_viewer, &["role", "set", "batch", "--weight", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("may not quota in role batch"), "{}", err(&o));
    let agent = {
        let o = c.cmd().args(["agents", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_str(out(&o).lines().next().unwrap()).unwrap();
        v["agent_id"].as_str().unwrap().to_string()
    };
    let o = as_token(&c, &b_viewer, &["reserve", &agent, "batch", "cpus:1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("may not reserve in role batch"), "{}", err(&o));
    let o = as_token(&c, &b_viewer, &["token", "create", "x", "--grant", "view:*"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("may not tokens"), "{}", err(&o));
    // A tokens grant does not let a token mint more than it has.
    let minter = token(&c, "minter", &["tokens:*", "view:a"], &[]);
    let o = as_token(&c, &minter, &["token", "create", "root", "--grant", "admin:*"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("may not grant admin:*"), "{}", err(&o));
    let o = as_token(&c, &minter, &["token", "create", "ok", "--grant", "view:a"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));

    // Nothing changed: one task, weight unchanged; the denials are audited.
    let o = c.cmd().args(["tasks", "--json"]).output().unwrap();
    assert_eq!(out(&o).lines().count(), 1, "{}", out(&o));
    let o = c.cmd().args(["roles", "--json"]).output().unwrap();
    assert!(!out(&o).contains("\"weight\":2"), "{}", out(&o));
    let lines = audit_lines(&c);
    let denied = |who: &str, action: &str| {
        lines.iter().any(|l| l["principal"] == who && l["action"] == action && l["decision"] == "deny")
    };
    assert!(denied("token:a-submitter", "submit"), "{lines:#?}");
    assert!(denied("token:b-viewer", "quota"), "{lines:#?}");
    assert!(denied("token:minter", "token_create"), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l["principal"] == "token:admin" && l["action"] == "submit" && l["decision"] == "allow")
    );

    // submit:a submits to role a through the batch framework (`--role a`)
    // but not to b; view:a then sees that task, and view:batch does not.
    let o = as_token(&c, &a_submitter, &["submit", "--role", "a", &h]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let a_task = out(&o).trim().to_string();
    let o = as_token(&c, &a_submitter, &["submit", "--role", "b", &h]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("may not submit in role b"), "{}", err(&o));
    let o = as_token(&c, &a_viewer, &["tasks", "--json"]);
    let seen: Vec<serde_json::Value> = out(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(seen.len(), 1, "{}", out(&o));
    assert_eq!((seen[0]["task_id"].as_str(), seen[0]["role"].as_str()), (Some(a_task.as_str()), Some("a")));
    let o = as_token(&c, &b_viewer, &["tasks", "--json"]);
    assert!(!out(&o).contains(&a_task), "view:batch sees role a's task: {}", out(&o));
    let o = as_token(&c, &b_viewer, &["logs", &a_task]);
    assert_eq!(o.status.code(), Some(2));

    // No secret in `token ls`.
    let o = c.cmd().args(["token", "ls", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    for s in [&a_viewer, &b_viewer, &a_submitter, &minter] {
        assert!(!out(&o).contains(&s[5..]), "token ls shows a secret");
    }
    let bearer = out(&o).lines().filter(|l| l.contains("\"kind\":\"bearer\"")).count();
    assert_eq!(bearer, 6, "admin and five made here: {}", out(&o));
    // Nor in the master's log or the audit log: not a token, not the
    // admin's, not a private key.
    let admin = wasmos_security::client::ClientConfig::read(&c.config).unwrap().unwrap().token.unwrap();
    let key = std::fs::read_to_string(c.state().join("tls/ca.key")).unwrap();
    let key_body = key.lines().nth(1).unwrap().to_string();
    let audit = std::fs::read_to_string(c.state().join("audit.jsonl")).unwrap();
    assert!(!c.log().is_empty() && audit.lines().count() > 10);
    for s in [&a_viewer, &b_viewer, &a_submitter, &minter, &admin] {
        assert!(!c.log().contains(&s[5..]), "the master's log shows a secret");
        assert!(!audit.contains(&s[5..]), "the audit log shows a secret");
    }
    assert!(!c.log().contains(&key_body) && !audit.contains(&key_body), "a private key leaked");
}

// ---------------------------------------------------------------- agents

type AgentClient = v1::agent_service_client::AgentServiceClient<wasmos_security::client::AuthChannel>;

/// A client of the AgentService; `rt` must be the runtime it is used on
/// (the connection's tasks live there).
fn agent_client(rt: &tokio::runtime::Runtime, t: &Target) -> AgentClient {
    let ch = rt.block_on(t.connect()).expect("connect");
    v1::agent_service_client::AgentServiceClient::new(ch)
}

/// Joins through the API with a key and CSR made here: the agent id and
/// the client certificate it got.
fn join(c: &Cluster, token: &str) -> Result<(String, ClientIdentity), tonic::Status> {
    let (key_pem, csr_pem) = agent_key_and_csr().unwrap();
    let t = Target { token: None, ..trusted(c) };
    let rt = rt();
    let mut client = agent_client(&rt, &t);
    let r = rt.block_on(client.join(v1::JoinRequest { token: token.into(), csr_pem }))?.into_inner();
    Ok((r.agent_id, ClientIdentity { cert_pem: r.cert_pem, key_pem }))
}

fn join_token(c: &Cluster, name: &str, extra: &[&str]) -> String {
    let o = c.cmd().args(["token", "create", name, "--agent"]).args(extra).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    out(&o).trim().to_string()
}

fn info() -> Option<v1::AgentInfo> {
    Some(v1::AgentInfo {
        hostname: "intruder".into(),
        resources: Some(wasmos_proto::resources_to_wire(&wasmos_model::Resources::parse("cpus:1;mem:1GiB").unwrap())),
        ..Default::default()
    })
}

#[test]
fn agents_join_once_with_a_token_and_speak_only_for_themselves() {
    let c = Cluster::start();
    // The dev agent that is there: the one to impersonate.
    let victim = {
        let o = c.cmd().args(["agents", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_str(out(&o).lines().next().expect("an agent")).unwrap();
        v["agent_id"].as_str().unwrap().to_string()
    };
    let once = join_token(&c, "once", &["--uses", "1"]);
    assert!(once.starts_with("wsmj_"), "{once}");
    let (me, cert) = join(&c, &once).expect("the first join");
    assert!(me.starts_with("agent-") && me != victim, "{me}");
    let again = join(&c, &once).unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unauthenticated, "{again:?}");
    assert!(again.message().contains("used up"), "{again:?}");
    let late = join_token(&c, "late", &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let expired = join(&c, &late).unwrap_err();
    assert!(expired.message().contains("expired"), "{expired:?}");
    let made_up = format!("wsmj_{}.{}", "ab".repeat(32), "cd".repeat(32));
    assert_eq!(join(&c, &made_up).unwrap_err().code(), tonic::Code::Unauthenticated);

    // With its own certificate the agent registers and heartbeats as itself ...
    let rt = rt();
    let mut a = agent_client(&rt, &Target { identity: Some(cert), token: None, ..trusted(&c) });
    let reg = v1::RegisterAgentRequest { info: info(), agent_id: me.clone(), running_tasks: vec![] };
    rt.block_on(a.register(reg)).expect("registering as itself");
    rt.block_on(a.heartbeat(v1::HeartbeatRequest { agent_id: me.clone(), stats: None, usage: vec![] }))
        .expect("its own heartbeat");
    // ... but never as another agent, nor as a new one.
    for other in [victim.as_str(), ""] {
        let reg = v1::RegisterAgentRequest { info: info(), agent_id: other.into(), running_tasks: vec![] };
        let e = rt.block_on(a.register(reg)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "register as {other:?}: {e:?}");
    }
    let e = rt
        .block_on(a.heartbeat(v1::HeartbeatRequest { agent_id: victim.clone(), stats: None, usage: vec![] }))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let forged = v1::TaskStatus { task_id: "task-x".into(), state: 4, uuid: vec![1; 16], ..Default::default() };
    let e = rt.block_on(a.update(v1::StatusUpdates { agent_id: victim.clone(), updates: vec![forged] })).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = rt.block_on(a.commands(v1::AgentStreamRequest { agent_id: victim.clone() })).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // An agent certificate is no token: the Operator and Scheduler APIs refuse it.
    let as_me_ch =
        rt.block_on(Target { identity: as_me_identity(&c, &me), token: None, ..trusted(&c) }.connect()).unwrap();
    let e = rt
        .block_on(
            v1::operator_client::OperatorClient::new(as_me_ch.clone()).list_tasks(v1::ListTasksRequest::default()),
        )
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let sub = v1::SubscribeRequest {
        framework: Some(v1::FrameworkInfo { name: "x".into(), role: "x".into(), ..Default::default() }),
    };
    let e = rt.block_on(v1::scheduler_client::SchedulerClient::new(as_me_ch).subscribe(sub)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // No identity at all: the agent protocol refuses.
    let mut anon = agent_client(&rt, &Target { token: None, ..trusted(&c) });
    let reg = v1::RegisterAgentRequest { info: info(), agent_id: victim.clone(), running_tasks: vec![] };
    assert_eq!(rt.block_on(anon.register(reg)).unwrap_err().code(), tonic::Code::Unauthenticated);

    // The victim is untouched and still the cluster's; the refusals are audited.
    let o = c.cmd().args(["agents", "--json"]).output().unwrap();
    assert!(out(&o).contains(&victim), "{}", out(&o));
    let lines = audit_lines(&c);
    assert!(lines.iter().any(|l| l["principal"] == format!("agent:{me}") && l["decision"] == "deny"), "{lines:#?}");
    // Join tokens list their uses; no secret shows.
    let o = c.cmd().args(["token", "ls", "--json"]).output().unwrap();
    assert!(!out(&o).contains(&once[5..20]), "a join secret is listed");

    // Every joined agent is listed as `agent@ID`; revoking it removes the
    // agent at once and refuses its (still unexpired) certificate.
    let row = format!("agent@{me}");
    assert!(out(&o).contains(&format!("\"name\":\"{row}\"")), "{}", out(&o));
    let o = c.cmd().args(["token", "revoke", &row]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let e = rt
        .block_on(a.heartbeat(v1::HeartbeatRequest { agent_id: me.clone(), stats: None, usage: vec![] }))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");
    let reg = v1::RegisterAgentRequest { info: info(), agent_id: me.clone(), running_tasks: vec![] };
    assert_eq!(rt.block_on(a.register(reg)).unwrap_err().code(), tonic::Code::Unauthenticated);
    let o = c.cmd().args(["agents", "--json"]).output().unwrap();
    assert!(!out(&o).contains(&me) && out(&o).contains(&victim), "{}", out(&o));
}

/// The identity `me` got: made again from the same CA for the second
/// connection (a certificate is not secret; what matters is the key).
fn as_me_identity(c: &Cluster, me: &str) -> Option<ClientIdentity> {
    let pki = Pki::load(&c.state().join("tls")).unwrap();
    let now = OffsetDateTime::now_utc();
    Some(agent_identity(
        &pki,
        me,
        now - wasmos_security::time::Duration::hours(1),
        now + wasmos_security::time::Duration::hours(1),
    ))
}

#[test]
fn agents_renew_their_certificate_and_keep_working() {
    let c = Cluster::start_with(&["--agent-cert-ttl", "3s"]);
    let cert = c.state().join("agent-0/identity/cert.pem");
    let first = std::fs::read_to_string(&cert).expect("the dev agent joined");
    let t0 = Instant::now();
    while std::fs::read_to_string(&cert).unwrap() == first {
        assert!(t0.elapsed() < Duration::from_secs(20), "the certificate was not renewed within 20 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Past the first certificate's end, tasks still run.
    std::thread::sleep(Duration::from_secs(3));
    let o = c.cmd().args(["submit", "--wait", &hello()]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
}

// ---------------------------------------------------------------- signed modules

#[test]
fn a_role_that_requires_signed_modules_refuses_unsigned_and_wrongly_signed_ones() {
    let c = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| c.cmd().current_dir(tmp.path()).args(args).output().unwrap();
    // Two keys: the role trusts the first.
    let o = run(&["keygen", "--out", "ours"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let ours = out(&o).trim().to_string();
    assert_eq!(run(&["keygen", "--out", "theirs"]).status.code(), Some(0));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(tmp.path().join("ours.key")).unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o600);
    }
    let o = run(&["role", "set", "batch", "--require-signed", &ours]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let module = tmp.path().join("hello.wasm");
    std::fs::copy(hello(), &module).unwrap();
    let m = module.to_str().unwrap();

    // Unsigned: refused before anything is queued.
    let o = run(&["submit", m]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("requires modules signed") && err(&o).contains("wasmos sign"), "{}", err(&o));
    // Signed by a key the role does not trust: refused.
    assert_eq!(run(&["sign", "--key", "theirs.key", m]).status.code(), Some(0));
    let o = run(&["submit", m]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("does not verify"), "{}", err(&o));
    // A signature of another module: refused.
    let other = tmp.path().join("other.wasm");
    std::fs::write(&other, wat::parse_str("(module (func (export \"_start\")))").unwrap()).unwrap();
    assert_eq!(run(&["sign", "--key", "ours.key", other.to_str().unwrap()]).status.code(), Some(0));
    let o = run(&["submit", "--signature", "other.wasm.sig", m]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("does not verify"), "{}", err(&o));
    // Nothing was queued.
    assert_eq!(out(&run(&["tasks", "--json"])).trim(), "", "a refused submit left tasks behind");
    // Signed by the trusted key: it runs.
    assert_eq!(run(&["sign", "--key", "ours.key", m]).status.code(), Some(0));
    let o = run(&["submit", "--wait", m]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    // A hosted framework deployed into a role that requires signatures.
    assert_eq!(run(&["role", "set", "eng", "--require-signed", &ours]).status.code(), Some(0));
    let sched = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guests/sjf.wasm");
    let o = run(&["framework", "deploy", "--name", "sjf", "--role", "eng", sched.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("requires modules signed"), "{}", err(&o));
    // The role lists its key; clearing it accepts unsigned modules again.
    assert!(out(&run(&["roles", "--json"])).contains(&ours));
    assert_eq!(run(&["role", "set", "batch", "--clear-signers"]).status.code(), Some(0));
    std::fs::remove_file(tmp.path().join("hello.wasm.sig")).unwrap();
    assert_eq!(run(&["submit", m]).status.code(), Some(0));
}

/// A remote framework's own launches in a role that requires signatures:
/// refused (`unsigned_module`) unless the launch carries the module's
/// signature or the master verified one for that module in the role before.
#[test]
fn a_framework_launches_only_signed_modules_in_a_role_that_requires_them() {
    use sha2::Digest;
    let c = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| c.cmd().current_dir(tmp.path()).args(args).output().unwrap();
    let ours = out(&run(&["keygen", "--out", "ours"])).trim().to_string();
    assert_eq!(run(&["role", "set", "a", "--require-signed", &ours]).status.code(), Some(0));
    let module = tmp.path().join("hello.wasm");
    std::fs::copy(hello(), &module).unwrap();
    let m = module.to_str().unwrap();
    // In the artifact store (role batch needs no signature).
    assert_eq!(run(&["submit", "--wait", m]).status.code(), Some(0));
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&module).unwrap()));

    let tok = token(&c, "fw-a", &["register_framework:a"], &[]);
    let rt = rt();
    let ch = rt.block_on(Target { token: Some(tok), ..trusted(&c) }.connect()).unwrap();
    let mut sched = v1::scheduler_client::SchedulerClient::new(ch);
    let info = v1::SubscribeRequest {
        framework: Some(v1::FrameworkInfo { name: "fw-a".into(), role: "a".into(), ..Default::default() }),
    };
    let mut events = rt.block_on(sched.subscribe(info)).unwrap().into_inner();
    let mut fw = String::new();
    // Launches `task_id` on the next offer; returns its terminal update.
    let mut launch = |task_id: &str, signature: String| -> v1::TaskStatus {
        rt.block_on(async {
            loop {
                let ev =
                    tokio::time::timeout(Duration::from_secs(30), events.message()).await.unwrap().unwrap().unwrap();
                match ev.event {
                    Some(v1::event::Event::Subscribed(s)) => fw = s.framework_id,
                    Some(v1::event::Event::Offers(o)) if !task_id.is_empty() => {
                        let spec = v1::TaskSpec {
                            task_id: task_id.into(),
                            name: "hello".into(),
                            module_sha256: sha.clone(),
                            resources: Some(wasmos_proto::resources_to_wire(
                                &wasmos_model::Resources::parse("cpus:0.1;mem:16MiB").unwrap(),
                            )),
                            signature: signature.clone(),
                            ..Default::default()
                        };
                        let accept = v1::call::Accept {
                            offer_ids: vec![o.offers[0].offer_id.clone()],
                            launch: vec![spec],
                            filters: None,
                        };
                        let call = v1::Call { framework_id: fw.clone(), call: Some(v1::call::Call::Accept(accept)) };
                        sched.call(call).await.unwrap();
                    }
                    Some(v1::event::Event::Update(u)) => {
                        let st = u.status.unwrap();
                        let terminal =
                            ![v1::TaskState::TaskStaging, v1::TaskState::TaskStarting, v1::TaskState::TaskRunning]
                                .iter()
                                .any(|s| *s as i32 == st.state);
                        if st.task_id == task_id && terminal {
                            return st;
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    // Unsigned, never verified in role a: refused, never launched.
    let st = launch("t-unsigned", String::new());
    assert_eq!((st.state, st.reason.as_str()), (v1::TaskState::TaskError as i32, "unsigned_module"), "{st:?}");
    assert!(st.message.contains("role a requires modules signed"), "{st:?}");
    assert!(st.agent_id.is_empty(), "{st:?}");
    // A signature by another key: refused.
    assert_eq!(run(&["keygen", "--out", "theirs"]).status.code(), Some(0));
    assert_eq!(run(&["sign", "--key", "theirs.key", m]).status.code(), Some(0));
    let theirs = std::fs::read_to_string(tmp.path().join("hello.wasm.sig")).unwrap();
    let st = launch("t-theirs", theirs.trim().to_string());
    assert_eq!(st.reason, "unsigned_module", "{st:?}");
    assert!(st.message.contains("does not verify"), "{st:?}");
    // Carrying its signature: it runs.
    assert_eq!(run(&["sign", "--key", "ours.key", m]).status.code(), Some(0));
    let sig = std::fs::read_to_string(tmp.path().join("hello.wasm.sig")).unwrap();
    let st = launch("t-signed", sig.trim().to_string());
    assert_eq!(st.state, v1::TaskState::TaskFinished as i32, "{st:?}");
    // Verified once for role a, the module launches there without it.
    let st = launch("t-again", String::new());
    assert_eq!(st.state, v1::TaskState::TaskFinished as i32, "{st:?}");
}

// ---------------------------------------------------------------- frameworks

#[test]
fn frameworks_subscribe_only_in_their_roles_and_call_only_as_themselves() {
    let c = Cluster::start();
    let a_tok = token(&c, "fw-a", &["register_framework:a"], &[]);
    let b_tok = token(&c, "fw-b", &["register_framework:b"], &[]);
    let rt = rt();
    let client = |tok: &str| {
        let ch = rt.block_on(Target { token: Some(tok.to_string()), ..trusted(&c) }.connect()).unwrap();
        v1::scheduler_client::SchedulerClient::new(ch)
    };
    let info = |role: &str| v1::SubscribeRequest {
        framework: Some(v1::FrameworkInfo { name: format!("fw-{role}"), role: role.into(), ..Default::default() }),
    };
    // A token for role a may not subscribe in role b.
    let e = rt.block_on(client(&a_tok).subscribe(info("b"))).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("token fw-a may not register_framework in role b"), "{e:?}");
    // B subscribes in b.
    let mut b = client(&b_tok);
    let mut events = rt.block_on(b.subscribe(info("b"))).unwrap().into_inner();
    let first = rt.block_on(events.message()).unwrap().expect("subscribed");
    let Some(v1::event::Event::Subscribed(s)) = first.event else { panic!("{first:?}") };
    let fb = s.framework_id;
    // A may not call as B: not teardown, not kill, not reconcile.
    let mut a = client(&a_tok);
    for call in [
        v1::call::Call::Teardown(v1::call::Teardown {}),
        v1::call::Call::Kill(v1::call::Kill { task_id: "task-x".into() }),
        v1::call::Call::Reconcile(v1::call::Reconcile { task_ids: vec![] }),
    ] {
        let e = rt.block_on(a.call(v1::Call { framework_id: fb.clone(), call: Some(call) })).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    }
    // B is still there, and may call as itself: it leaves (its offers would
    // otherwise hold the cluster's resources).
    let o = c.cmd().args(["frameworks", "--json"]).output().unwrap();
    assert!(out(&o).contains(&fb), "{}", out(&o));
    let teardown = v1::Call { framework_id: fb.clone(), call: Some(v1::call::Call::Teardown(v1::call::Teardown {})) };
    rt.block_on(b.call(teardown)).expect("B's own call");
    // A view:a token watching sees nothing of B (role b) nor of batch.
    let a_viewer = token(&c, "a-watcher", &["view:a"], &[]);
    let mut op = {
        let ch = rt.block_on(Target { token: Some(a_viewer), ..trusted(&c) }.connect()).unwrap();
        v1::operator_client::OperatorClient::new(ch)
    };
    let mut watch =
        rt.block_on(op.watch(v1::WatchRequest { framework_id: String::new(), from: None })).unwrap().into_inner();
    let o = c.cmd().args(["submit", "--wait", &hello()]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let seen = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), watch.message()).await });
    assert!(seen.is_err(), "view:a saw an event of role batch: {seen:?}");
}

#[test]
fn a_master_serves_a_certificate_brought_by_the_operator() {
    // The operator's own CA and certificate (made here with the same tool).
    let own = tempfile::tempdir().unwrap();
    Pki::load_or_create(own.path(), &[]).unwrap();
    let f = |n: &str| own.path().join(n).to_str().unwrap().to_string();
    let c =
        Cluster::start_with(&["--tls-cert", &f("server.pem"), "--tls-key", &f("server.key"), "--tls-ca", &f("ca.pem")]);
    // Clients trust the operator's CA (the client config carries it), and
    // the dev agent joined through it.
    let cfg = wasmos_security::client::ClientConfig::read(&c.config).unwrap().unwrap();
    assert_eq!(cfg.ca_pem.as_deref(), Some(std::fs::read_to_string(own.path().join("ca.pem")).unwrap().as_str()));
    serving(&c);
    let o = c.cmd().args(["submit", "--wait", &hello()]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    // The cluster's own CA is not what the master presents.
    let cluster_ca = std::fs::read_to_string(c.state().join("tls/ca.pem")).unwrap();
    assert!(list_agents(&Target { ca_pem: Some(cluster_ca), ..trusted(&c) }).is_err());
}

#[test]
fn audit_follow_prints_lines_as_they_are_written() {
    use std::io::BufRead;
    let c = Cluster::start();
    let mut follow = c
        .cmd()
        .args(["audit", "--follow", "--json", "--state-dir"])
        .arg(c.state())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    token(&c, "followed", &["view:a"], &[]);
    let t0 = std::time::Instant::now();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l.contains("token_create") && l.contains("followed") => break Some(l),
            Ok(_) if t0.elapsed() < Duration::from_secs(10) => continue,
            _ => break None,
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    let line: serde_json::Value = serde_json::from_str(&found.expect("the new line while following")).unwrap();
    assert_eq!((line["principal"].as_str(), line["decision"].as_str()), (Some("token:admin"), Some("allow")));
}
