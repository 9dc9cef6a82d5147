//! The operations files under `deploy/`, checked by their own tools:
//! Prometheus rules with `promtool check rules` and `promtool test rules`
//! (every alert fires on the series that should fire it), and every
//! runbook link of an alert points at a section of docs/operations.md; the
//! Grafana dashboards' every panel query answered by a real Prometheus
//! scraping a real cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(clippy::duplicate_mod)]
#[path = "common/child.rs"]
mod child;
mod common;
#[path = "common/nats.rs"]
mod nats;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Api, Node};
use nats::NatsServer;
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args` in `dir`; its stdout and stderr, once it succeeded.
/// `hint`: where the tool comes from.
fn run_tool(program: &str, args: &[&str], dir: &Path, hint: &str) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} ({hint}; run scripts/setup): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}:\n{text}");
    text
}

/// Runs `script` (Python, with PyYAML: kubernetes-validate's own
/// dependency) in `dir` with `args`; it must print exactly "ok".
fn python_check(script: &str, args: &[&str], dir: &Path) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn promtool(args: &[&str]) -> String {
    run_tool(
        "promtool",
        args,
        &root().join("deploy/prometheus"),
        "Debian's prometheus",
    )
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

/// Every panel query of every dashboard, evaluated by a real Prometheus
/// (Debian's) scraping a real cluster (nats-server, 2 replicas, a proxy)
/// every second with the rules loaded, while writes and searches run: each
/// must return data. `$instance` is a replica.
#[tokio::test]
async fn every_dashboard_panel_returns_data_from_a_live_cluster() {
    let nats = NatsServer::start();
    let url = nats.url();
    let replica_args = ["--mode", "replica", "--nats-url", url.as_str()];
    let a = Node::start(&replica_args).await;
    let b = Node::start(&replica_args).await;
    let list = format!("{},{}", a.url(""), b.url(""));
    let p = Node::start(&["--mode", "proxy", "--nats-url", &url, "--replicas", &list]).await;
    let api = Api::json(&p);
    assert_eq!(api.call("PUT", "/main", None).await.status, 200);

    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let target = |n: &Node| format!("127.0.0.1:{}", n.port);
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {:?}\n\
             scrape_configs:\n  - job_name: fpnode\n    metrics_path: /_metrics\n    static_configs:\n      - targets: [{:?}, {:?}, {:?}]\n",
            root().join("deploy/prometheus/rules.yml"),
            target(&a),
            target(&b),
            target(&p),
        ),
    )
    .unwrap();
    let mut cmd = Command::new("prometheus");
    child::die_with_parent(&mut cmd);
    let mut prometheus = cmd
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("prometheus (Debian's; run scripts/setup): {e}"));
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut prometheus);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/-/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "prometheus never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Traffic through the proxy (writes through the stream, searches
    // forwarded to the replicas) and on a replica, while it scrapes.
    let traffic = {
        let (api, direct) = (api.clone(), Api::json(&a));
        tokio::spawn(async move {
            for round in 0u32..400 {
                let changes: Vec<_> = (0..20u32)
                    .map(|i| {
                        let id = round * 20 + i + 1;
                        json!({"insert": {"id": id, "hashes": [id, id + 1, id + 2]}})
                    })
                    .collect();
                let via = if round % 2 == 0 { &api } else { &direct };
                via.call("POST", "/main/_update", Some(json!({"changes": changes})))
                    .await;
                for q in 0..3u32 {
                    let id = round * 20 + q + 1;
                    api.call(
                        "POST",
                        "/main/_search",
                        Some(json!({"query": [id, id + 1]})),
                    )
                    .await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let instance = target(&a);
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(root().join("deploy/grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for panel in dashboard["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap().replace("$instance", &instance);
                queries.push((
                    name.clone(),
                    panel["title"].as_str().unwrap().to_string(),
                    expr,
                ));
            }
        }
    }
    assert!(queries.len() >= 40, "{} queries", queries.len());
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut empty: Vec<(String, String, String)> = queries.clone();
    while !empty.is_empty() {
        assert!(
            Instant::now() < deadline,
            "panels without data after 90 s: {empty:#?}\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut still = Vec::new();
        for (dashboard, title, expr) in empty {
            let answer: Value = http
                .get(format!("{base}/api/v1/query"))
                .query(&[("query", expr.as_str())])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(
                answer["status"], "success",
                "{dashboard} {title}: {expr}: {answer}"
            );
            if answer["data"]["result"]
                .as_array()
                .is_none_or(|r| r.is_empty())
            {
                still.push((dashboard, title, expr));
            }
        }
        empty = still;
    }
    traffic.abort();
}

/// The Kubernetes manifests against the Kubernetes API schemas
/// (`kubernetes-validate --strict`, from PyPI; scripts/setup installs it):
/// every resource passes, unknown fields included. The ServiceMonitor (a
/// Prometheus Operator CRD, whose schema is not available offline) and the
/// NATS chart values are parsed and checked for what fpnode needs.
#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let dir = root().join("deploy/kubernetes");
    let files = ["replicas.yaml", "proxy.yaml", "secret.example.yaml"];
    let mut args = vec!["--strict"];
    args.extend(files);
    let text = run_tool("kubernetes-validate", &args, &dir, "PyPI");
    for resource in [
        "service/fpnode-replica",
        "statefulset/fpnode-replica",
        "poddisruptionbudget/fpnode-replica",
        "deployment/fpnode-proxy",
        "service/fpnode ",
        "secret/fpnode-tokens",
    ] {
        assert!(
            text.contains(&format!("passed for resource {resource}")),
            "{resource}: {text}"
        );
    }
    assert!(!text.contains("WARN") && !text.contains("ERROR"), "{text}");

    // YAML through PyYAML (kubernetes-validate's own dependency).
    let check = r#"
import sys, yaml
sm = yaml.safe_load(open("servicemonitor.yaml"))
assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor", sm
ep = sm["spec"]["endpoints"][0]
assert ep["path"] == "/_metrics" and ep["port"] == "http", ep
assert sm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "fpnode"}
nats = yaml.safe_load(open("nats-values.yaml"))
assert nats["config"]["jetstream"]["enabled"] is True
assert nats["config"]["cluster"]["replicas"] == 3
for doc in yaml.safe_load_all(open("replicas.yaml")):
    if doc["kind"] == "StatefulSet":
        c = doc["spec"]["template"]["spec"]["containers"][0]
        assert c["readinessProbe"]["httpGet"]["path"].startswith("/_ready"), c
        assert "--stream-replicas" in c["args"]
for doc in yaml.safe_load_all(open("proxy.yaml")):
    if doc["kind"] == "Deployment":
        c = doc["spec"]["template"]["spec"]["containers"][0]
        # A read-only root: what the node writes needs volumes.
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/data", "/tmp"} <= mounts, mounts
print("ok")
"#;
    python_check(check, &[], &dir);
}

/// The compose deployment, checked without running it (scripts/compose-check
/// runs it, by hand: it needs podman and images): the NATS configuration
/// through `nats-server -t`, Prometheus's through `promtool check config`
/// (paths mapped to the repository), and the compose files against each
/// other and against fpnode: every file they mount exists or is made by
/// init-secrets, every `FPNODE_*` variable is one `fpnode serve` reads, the
/// proxy's replicas and Prometheus's targets are the replica services.
#[test]
fn the_compose_deployment_is_consistent() {
    let dir = root().join("deploy/compose");
    let nats = Command::new("nats-server")
        .args(["-t", "-c", "nats.conf"])
        .env("NATS_NAME", "nats-1")
        .current_dir(&dir)
        .output()
        .expect("nats-server (scripts/setup installs it)");
    assert!(
        nats.status.success(),
        "{}",
        String::from_utf8_lossy(&nats.stderr)
    );

    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("read-token");
    std::fs::write(&token, "compose-check-read-token").unwrap();
    let config = std::fs::read_to_string(dir.join("prometheus.yml"))
        .unwrap()
        .replace(
            "/etc/prometheus/rules.yml",
            &root().join("deploy/prometheus/rules.yml").to_string_lossy(),
        )
        .replace("/etc/prometheus/read-token", &token.to_string_lossy())
        .replace(
            "/etc/prometheus/targets",
            &dir.join("targets").to_string_lossy(),
        );
    assert_ne!(
        config,
        std::fs::read_to_string(dir.join("prometheus.yml")).unwrap()
    );
    let mapped = tmp.path().join("prometheus.yml");
    std::fs::write(&mapped, config).unwrap();
    let text = promtool(&["check", "config", &mapped.to_string_lossy()]);
    assert!(text.contains("SUCCESS: 1 rule files found"), "{text}");

    let help = Command::new(env!("CARGO_BIN_EXE_fpnode"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let envs: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|s| s.split('=').next())
        .collect();
    assert!(envs.contains(&"FPNODE_REPLICAS"), "{envs:?}");

    let check = r#"
import json, os, re, sys, yaml
envs = set(sys.argv[1].split(","))
base = yaml.safe_load(open("compose.yml"))
extra = yaml.safe_load(open("replica-3.yml"))
services = base["services"]
assert set(services) == {"nats-1", "nats-2", "nats-3", "replica-1", "replica-2", "proxy", "prometheus", "grafana"}, set(services)
made = re.findall(r'"\$DIR/([a-z.-]+)"', open("init-secrets").read())
def default(text):
    # ${VAR:-default} -> default: the paths as they are without the variables.
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
for name, s in list(services.items()) + list(extra["services"].items()):
    for v in s.get("volumes", []):
        src = default(v).split(":")[0]
        if src.startswith("./secrets/"):
            assert src[len("./secrets/"):] in made, (name, src, made)
        elif src.startswith("."):
            assert os.path.exists(src), (name, src)
    for f in map(default, s.get("env_file", [])):
        assert f.startswith("./secrets/") and f[len("./secrets/"):] in made, (name, f)
    for k in (s.get("environment") or {}):
        if k.startswith("FPNODE_"):
            assert k in envs, (name, k)
    if name.startswith("nats-"):
        assert s["environment"]["NATS_NAME"] == name
replicas = sorted(n for n in services if n.startswith("replica-"))
listed = re.search(r":-([^}]*)\}", services["proxy"]["environment"]["FPNODE_REPLICAS"]).group(1)
assert listed.split(",") == [f"http://{r}:6081" for r in replicas], listed
for n in replicas:
    assert "--stream-replicas" in services[n]["command"] and "3" in services[n]["command"]
assert services["proxy"]["command"][-1] == "proxy"
targets = [t for g in json.load(open("targets/fpnode.json")) for t in g["targets"]]
assert sorted(targets) == sorted([f"{r}:6081" for r in replicas] + ["proxy:6081"]), targets
r3 = extra["services"]["replica-3"]
assert r3["command"] == services["replica-1"]["command"], r3
# Grafana (not run here): its provisioning finds the dashboards where
# compose mounts them, its datasource is the prometheus service, and every
# dashboard uses that datasource's uid.
mounts = dict(default(v).split(":")[:2] for v in services["grafana"]["volumes"])
assert mounts["../grafana/dashboards"] == yaml.safe_load(open("../grafana/provisioning/dashboards/fpnode.yml"))["providers"][0]["options"]["path"], mounts
for src in mounts:
    assert os.path.exists(src), src
ds = yaml.safe_load(open("../grafana/provisioning/datasources/prometheus.yml"))["datasources"][0]
assert ds["url"] == "http://prometheus:9090" and "prometheus" in services, ds
for name in os.listdir("../grafana/dashboards"):
    text = open(os.path.join("../grafana/dashboards", name)).read()
    uids = set(re.findall(r'"uid":\s*"([^"]+)"', text)) & {ds["uid"], "${DS_PROMETHEUS}"}
    assert '"type": "prometheus"' in text and ds["uid"] in uids, name
print("ok")
"#;
    python_check(check, &[&envs.join(",")], &dir);
}
