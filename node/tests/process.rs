//! `meshnode` as separate processes on 127.0.0.1, driven through its CLI and HTTP API:
//! init, run, publish, append, subscribe, get, events, status, verify, and `kill -9`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshnode");
const WAIT: Duration = Duration::from_secs(30);

fn meshnode(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("meshnode runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (code, stdout, stderr) = meshnode(args);
    assert_eq!(code, 0, "meshnode {args:?} failed: {stderr}");
    stdout
}

/// A `meshnode run` child process, killed when dropped.
struct Running {
    child: Child,
    api: String,
    p2p: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn init(home: &Path, domain: &str) {
    ok(&[
        "init",
        "--home",
        home.to_str().unwrap(),
        "--domain",
        domain,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--api",
        "127.0.0.1:0",
    ]);
}

/// Starts `meshnode run` and waits until it prints its addresses.
fn run(home: &Path, peers: &[&str]) -> Running {
    let mut args = vec![
        "run".to_owned(),
        "--home".to_owned(),
        home.to_str().unwrap().to_owned(),
    ];
    for p in peers {
        args.push("--peer".into());
        args.push((*p).to_owned());
    }
    let mut child = Command::new(BIN)
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("meshnode run starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut api, mut p2p) = (None, None);
    let deadline = Instant::now() + WAIT;
    while api.is_none() || p2p.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("meshnode run prints its addresses");
        if let Some(rest) = line.strip_prefix("HTTP API on http://") {
            api = Some(rest.trim_end_matches("/v1/status").to_owned());
        }
        if let Some(rest) = line.strip_prefix("listening on ") {
            p2p = Some(rest.to_owned());
        }
    }
    Running {
        child,
        api: api.unwrap(),
        p2p: p2p.unwrap(),
    }
}

fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn descriptor_file(dir: &Path, name: &str, domain: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "name: {name}\ndomain: {domain}\nowner: {domain}@example.com\ndescription: {name} of {domain}\n\
             version: 1.0.0\nschema:\n  fields:\n    - name: id\n      type: string\n"
        ),
    )
    .unwrap();
    path
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn two_processes_publish_subscribe_and_replicate_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("sales"), dir.path().join("billing"));
    init(&a, "sales");
    init(&b, "billing");
    let (code, _, stderr) = meshnode(&["init", "--home", a.to_str().unwrap(), "--domain", "sales"]);
    assert_eq!(code, 1, "init must not replace an identity");
    assert!(stderr.contains("already holds a node identity"), "{stderr}");

    let sales = run(&a, &[]);
    let billing = run(&b, &[&sales.p2p]);
    let file = descriptor_file(dir.path(), "orders", "sales");
    let published = json(&ok(&[
        "publish",
        "--api",
        &sales.api,
        file.to_str().unwrap(),
        "--json",
    ]));
    let product = published["product"].as_str().unwrap().to_owned();

    eventually("billing's catalog has orders", || {
        let entries = json(&ok(&["catalog", "--api", &billing.api, "--json"]));
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["product"] == product.as_str())
    });
    ok(&["subscribe", "--api", &billing.api, &product]);
    let receipt = json(&ok(&[
        "append",
        "--api",
        &sales.api,
        &product,
        "--key",
        "o-1",
        "--json",
        r#"{"total":12}"#,
    ]));
    assert_eq!(receipt["seq"], 1);
    ok(&[
        "append",
        "--api",
        &sales.api,
        &product,
        "--key",
        "o-2",
        "--json",
        r#"{"total":3}"#,
    ]);
    ok(&[
        "append", "--api", &sales.api, &product, "--key", "o-2", "--delete",
    ]);
    eventually("billing replicates the log", || {
        let (code, stdout, _) = meshnode(&["get", "--api", &billing.api, &product, "--key", "o-1"]);
        code == 0 && stdout.trim() == r#"{"total":12}"#
    });
    eventually("billing holds all three events", || {
        json(&ok(&["status", "--api", &billing.api, "--json"]))["subscriptions"][0]["held_seq"] == 3
    });
    let (code, _, stderr) = meshnode(&["get", "--api", &billing.api, &product, "--key", "o-2"]);
    assert_eq!(code, 1, "o-2 was deleted");
    assert!(stderr.contains("no record"), "{stderr}");
    let events = json(&ok(&["events", "--api", &billing.api, &product, "--json"]));
    let statuses: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["verified", "verified", "verified"]);
    let status = json(&ok(&["status", "--api", &billing.api, "--json"]));
    assert_eq!(status["subscriptions"][0]["held_seq"], 3);
    assert_eq!(status["subscriptions"][0]["lag"], 0);
    let metrics = ureq::get(format!("http://{}/metrics", billing.api))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("mesh_events_received_total 3"),
        "{metrics}"
    );

    // Discovery through the CLI: at a peer over libp2p, and at the local API.
    eventually("sales' index has orders", || {
        let found = json(&ok(&["search", "--api", &sales.api, "orders", "--json"]));
        found["total"] == 1
    });
    let remote = json(&ok(&["search", "--peer", &sales.p2p, "orders", "--json"]));
    assert_eq!(remote["hits"][0]["product"], product.as_str());
    let text = ok(&["search", "--peer", &sales.p2p, "orders"]);
    assert!(text.contains("1 product(s) match"), "{text}");
    // Once billing has a product of its own, its entry announces that it consumes orders:
    // every node then knows billing holds that log too.
    let invoices = descriptor_file(dir.path(), "invoices", "billing");
    ok(&["publish", "--api", &billing.api, invoices.to_str().unwrap()]);
    eventually("billing is a holder of orders", || {
        let found = json(&ok(&["search", "--api", &sales.api, "orders", "--json"]));
        found["hits"][0]["holders"]
            .as_array()
            .is_some_and(|h| h.len() == 2)
    });
    let mermaid = ok(&[
        "lineage",
        "--api",
        &billing.api,
        &product,
        "--downstream",
        "--format",
        "mermaid",
    ]);
    assert!(mermaid.starts_with("flowchart LR"), "{mermaid}");
    let trace = json(&ok(&[
        "trace",
        "--api",
        &billing.api,
        &product,
        "--key",
        "o-1",
        "--json",
    ]));
    assert_eq!(trace["steps"][0]["status"], "verified");

    // Bad input: a one-line reason and a non-zero exit, every time.
    for (args, reason) in [
        (
            vec![
                "append",
                "--api",
                &sales.api,
                &product,
                "--key",
                "k",
                "--json",
                "{not json",
            ],
            "is not JSON",
        ),
        (
            vec![
                "append", "--api", &sales.api, "nope", "--key", "k", "--delete",
            ],
            "invalid product id",
        ),
        (
            vec![
                "append",
                "--api",
                &billing.api,
                &product,
                "--key",
                "k",
                "--delete",
            ],
            "owned by another node",
        ),
        (vec!["status", "--api", "127.0.0.1:1"], "no node API"),
        (
            vec!["lineage", "--api", &sales.api, &product, "--format", "svg"],
            "unknown format",
        ),
        (
            vec!["search", "--peer", "/ip4/127.0.0.1/tcp/1", "orders"],
            "cannot reach the peer",
        ),
        (
            vec!["subscribe", "--api", &sales.api, &product],
            "own product",
        ),
    ] {
        let (code, _, stderr) = meshnode(&args);
        assert_eq!(code, 1, "{args:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: Orders\n").unwrap();
    let (code, _, stderr) = meshnode(&["publish", "--api", &sales.api, bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("invalid descriptor") && stderr.contains("missing field `domain`"),
        "{stderr}"
    );
}

#[test]
fn acknowledged_appends_survive_kill_9_and_the_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("sales");
    init(&home, "sales");
    let mut node = run(&home, &[]);
    let file = descriptor_file(dir.path(), "orders", "sales");
    let published = json(&ok(&[
        "publish",
        "--api",
        &node.api,
        file.to_str().unwrap(),
        "--json",
    ]));
    let product = published["product"].as_str().unwrap().to_owned();

    // Four writers append as fast as the node acknowledges; record every acknowledgement.
    let acked: Arc<Mutex<Vec<(u64, String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (acked, stop, api, product) = (
                acked.clone(),
                stop.clone(),
                node.api.clone(),
                product.clone(),
            );
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(5)))
                    .build()
                    .into();
                let url = format!("http://{api}/v1/products/{product}/events");
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{w}-{i}");
                    let body = serde_json::json!({ "key": key, "value": { "i": i } });
                    match agent.post(&url).send_json(&body) {
                        Ok(mut response) => {
                            let receipt: serde_json::Value =
                                response.body_mut().read_json().unwrap();
                            let seq = receipt["seq"].as_u64().unwrap();
                            let id = receipt["id"].as_str().unwrap().to_owned();
                            acked.lock().unwrap().push((seq, id, key));
                        }
                        Err(_) => break, // the node is gone
                    }
                }
            })
        })
        .collect();
    eventually("a few hundred appends are acknowledged", || {
        acked.lock().unwrap().len() >= 300
    });
    // SIGKILL while appends are in flight: no shutdown, no flush, nothing.
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);

    node = run(&home, &[]);
    let events = json(&ok(&[
        "events", "--api", &node.api, &product, "--limit", "10000", "--json",
    ]));
    let events = events.as_array().unwrap();
    for (seq, id, key) in &acked {
        let e = events
            .iter()
            .find(|e| e["seq"].as_u64() == Some(*seq))
            .unwrap_or_else(|| panic!("acknowledged seq {seq} is missing after kill -9"));
        assert_eq!(e["id"].as_str(), Some(id.as_str()), "seq {seq} changed");
        assert_eq!(e["key"].as_str(), Some(key.as_str()));
        assert_eq!(e["status"], "verified");
    }
    // The log is contiguous from 1 and appends go on where it stopped.
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let next = json(&ok(&[
        "append", "--api", &node.api, &product, "--key", "after", "--json", "{}",
    ]));
    assert_eq!(next["seq"].as_u64(), Some(seqs.len() as u64 + 1));

    // Offline audit needs the node stopped; a running node holds the store.
    let (code, _, stderr) = meshnode(&["verify", "--home", home.to_str().unwrap(), &product]);
    assert_eq!(code, 1);
    assert!(stderr.contains("is the node running"), "{stderr}");
    let pid = node.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    node.child.wait().unwrap();
    let report = json(&ok(&[
        "verify",
        "--home",
        home.to_str().unwrap(),
        &product,
        "--json",
    ]));
    assert_eq!(report["problems"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["events"].as_u64(), Some(seqs.len() as u64 + 1));
}

#[test]
fn demo_runs_end_to_end_and_exits_zero() {
    let (code, stdout, stderr) = meshnode(&["demo"]);
    assert_eq!(code, 0, "demo failed: {stderr}");
    for expected in [
        "The catalog at every node",
        "analytics holds all 10 events",
        "o-1 = {\"order_id\":\"o-1\"",
        "o-2 = (deleted)",
        "0 problems",
        "done: the mesh ran end to end",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
