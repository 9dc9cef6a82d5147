//! Startup errors are clear and name what is wrong: port in use, data directory
//! not writable, corrupt index data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn run_to_exit(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fpnode"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fpnode {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_port_in_use_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(&["--dir", dir.path().to_str().unwrap(), "--port", &port]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn an_unwritable_data_directory_is_a_clear_startup_error() {
    let out = run_to_exit(&["--dir", "/proc/fpnode-cannot-exist", "--port", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/proc/fpnode-cannot-exist"), "{err}");
}

#[tokio::test]
async fn corrupt_index_data_stops_startup_and_names_the_file() {
    let mut node = common::Node::start(&[]).await;
    let api = common::Api::json(&node);
    api.call("PUT", "/idx", None).await;
    api.call(
        "PUT",
        "/idx/1",
        Some(serde_json::json!({ "hashes": [1, 2, 3] })),
    )
    .await;
    node.terminate();
    let manifest = node
        .data_dir()
        .join("indexes/idx/00000000000000000001/MANIFEST");
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[20] ^= 0x55;
    std::fs::write(&manifest, bytes).unwrap();
    let out = run_to_exit(&["--dir", node.data_dir().to_str().unwrap(), "--port", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("indexes/idx/00000000000000000001/MANIFEST") && err.contains("corrupt"),
        "{err}"
    );
}
