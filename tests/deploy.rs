//! The operations files under `deploy/`, checked by their own tools:
//! Prometheus rules with `promtool check rules` and `promtool test rules`
//! (every alert fires on the series that should fire it), and every
//! runbook link of an alert points at a section of docs/operations.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root().join("deploy/prometheus"))
        .output()
        .unwrap_or_else(|e| panic!("promtool (Debian's prometheus; run scripts/setup): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_rules_are_valid_and_every_alert_fires_as_tested() {
    let checked = promtool(&["check", "rules", "rules.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "tests/rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert of the rules has a test.
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/rules.yml")).unwrap();
    let tests =
        std::fs::read_to_string(root().join("deploy/prometheus/tests/rules.test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no test"
        );
    }
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, other
/// punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_runbook_link_has_its_section() {
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/rules.yml")).unwrap();
    let ops = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let anchors: Vec<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let mut links = 0;
    for link in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook: docs/operations.md#"))
    {
        links += 1;
        assert!(anchors.iter().any(|a| a == link), "no section #{link}");
    }
    assert!(links >= 10, "{links} runbook links");
}
