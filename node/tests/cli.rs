//! The `meshnode` binary as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const GOOD: &str = "\
name: orders
domain: sales
owner: sales-data@example.com
description: Every order placed in the web shop.
version: 1.0.0
schema:
  fields:
    - name: order_id
      type: string
    - name: email
      type: string
      pii: true
";

fn meshnode(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshnode"))
        .args(args)
        .output()
        .expect("meshnode runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` to `name` in a new temporary directory, removed when the returned guard drops.
fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn check_accepts_a_valid_descriptor() {
    let (_dir, path) = write("good.yaml", GOOD);
    let (code, stdout, _) = meshnode(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("ok — orders 1.0.0 (sales domain), 2 fields incl. PII"),
        "{stdout}"
    );

    let (code, stdout, _) = meshnode(&["check", "--json", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("\"name\": \"orders\"") && stdout.contains("\"pii\": true"),
        "{stdout}"
    );
}

#[test]
fn check_reports_each_problem_with_file_line_and_field() {
    let (_dir, path) = write(
        "bad.yaml",
        &GOOD
            .replace("1.0.0", "1.0")
            .replace("name: email", "name: order_id"),
    );
    let (code, _, stderr) = meshnode(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with("meshnode: 2 problem(s)"), "{stderr}");
    assert!(
        stderr.contains("bad.yaml: line 5, column 10: version:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 10, column 13: schema.fields[1].name: duplicate field name"),
        "{stderr}"
    );
}

#[test]
fn check_of_a_missing_file_says_so_in_one_line() {
    let (code, _, stderr) = meshnode(&["check", "/nonexistent/orders.yaml"]);
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot read /nonexistent/orders.yaml"),
        "{stderr}"
    );
}

#[test]
fn help_is_available() {
    let (code, stdout, _) = meshnode(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("check"), "{stdout}");
}
