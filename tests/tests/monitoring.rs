//! monitoring/: the generated files are up to date, every rule passes
//! `promtool check rules`, every alert has `promtool test rules` cases and a
//! runbook section, every dashboard query parses, and the Alertmanager
//! config passes `amtool check-config` and routes as documented.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::harness::{bin, tool, workspace};
use gateway::monitoring::{dashboards, rules, Options};

fn monitoring_dir() -> PathBuf {
    workspace().join("monitoring")
}

fn default_config() -> gateway::Config {
    gateway::config::load(&gateway::config::Source::Embedded, &Default::default()).unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gw-monitoring-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out
}

#[test]
fn committed_output_matches_the_generator() {
    let out = tmp_dir("gen");
    run(Command::new(bin("gateway")).args([
        "monitoring",
        "generate",
        "--out",
        out.to_str().unwrap(),
    ]));
    let generated = files_under(&out);
    assert_eq!(generated.len(), 12, "{generated:?}");
    let fix = "regenerate with `cargo run -p gateway -- monitoring generate --out monitoring`";
    for rel in &generated {
        let want = std::fs::read_to_string(out.join(rel)).unwrap();
        let have = std::fs::read_to_string(monitoring_dir().join(rel))
            .unwrap_or_else(|_| panic!("monitoring/{} is missing: {fix}", rel.display()));
        assert!(
            want == have,
            "monitoring/{} is out of date: {fix}",
            rel.display()
        );
    }
    // No stale generated file left behind by an older generator.
    for dir in ["rules", "grafana", "kubernetes"] {
        for rel in files_under(&monitoring_dir().join(dir)) {
            let rel = Path::new(dir).join(rel);
            assert!(
                generated.contains(&rel),
                "monitoring/{} is not generated any more: delete it",
                rel.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn promtool_checks_the_rule_files() {
    let promtool = tool("promtool", "prometheus");
    let dir = monitoring_dir().join("rules");
    let mut cmd = Command::new(promtool);
    cmd.args(["check", "rules"]);
    for f in ["slo-recordings.yml", "slo-alerts.yml", "gateway-alerts.yml"] {
        cmd.arg(dir.join(f));
    }
    let out = run(&mut cmd);
    assert_eq!(out.matches("SUCCESS").count(), 3, "{out}");
}

#[test]
fn promtool_unit_tests_pass() {
    let promtool = tool("promtool", "prometheus");
    let dir = monitoring_dir().join("tests");
    let out = run(Command::new(promtool)
        .args(["test", "rules"])
        .arg(dir.join("gateway-alerts.test.yml"))
        .arg(dir.join("slo-alerts.test.yml")));
    assert_eq!(out.matches("SUCCESS").count(), 2, "{out}");
}

#[test]
fn every_alert_is_tested_both_ways_and_has_a_runbook() {
    let opts = Options::default();
    let alerts: BTreeSet<String> = rules::all(&default_config(), &opts)
        .into_iter()
        .filter(|r| r.alert)
        .inspect(|r| {
            for key in ["summary", "description", "runbook_url"] {
                assert!(r.annotations.contains_key(key), "{}: no {key}", r.name);
            }
            let sev = r.labels.get("severity").map(String::as_str);
            assert!(matches!(sev, Some("page" | "ticket")), "{}", r.name);
        })
        .map(|r| r.name)
        .collect();
    assert_eq!(alerts.len(), 12, "{alerts:?}");
    let tests = ["gateway-alerts.test.yml", "slo-alerts.test.yml"]
        .map(|f| std::fs::read_to_string(monitoring_dir().join("tests").join(f)).unwrap())
        .join("\n");
    let readme = std::fs::read_to_string(monitoring_dir().join("README.md")).unwrap();
    for a in &alerts {
        // Each alert's cases: one where it fires, one where it is silent.
        let blocks: Vec<&str> = tests
            .split("- eval_time:")
            .filter(|b| b.contains(&format!("alertname: {a}\n")))
            .collect();
        assert!(
            blocks.iter().any(|b| b.contains("exp_alerts:\n")),
            "{a}: no promtool case where it fires"
        );
        assert!(
            blocks.iter().any(|b| b.contains("exp_alerts: []")),
            "{a}: no promtool case where it stays silent"
        );
        assert!(
            readme.contains(&format!("### {a}\n")),
            "{a}: no runbook section `### {a}` in monitoring/README.md"
        );
    }
}

/// Grafana variables replaced by values Prometheus accepts.
pub fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$route", ".*")
        .replace("$upstream", ".*")
}

#[test]
fn every_dashboard_query_parses_and_dashboards_have_a_datasource_variable() {
    let promtool = tool("promtool", "prometheus");
    let cfg = default_config();
    let opts = Options::default();
    for (name, d) in dashboards::dashboards(&cfg, &opts) {
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter()
                .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
            "{name}: no datasource variable"
        );
        for p in d["panels"].as_array().unwrap() {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{name}");
        }
    }
    let overview = &dashboards::dashboards(&cfg, &opts)[0].1;
    assert!(overview["panels"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["type"] == "heatmap"));
    // promtool parses PromQL when checking rules: wrap each query in one.
    let mut text = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let queries = dashboards::queries(&cfg, &opts);
    assert!(queries.len() >= 30, "{}", queries.len());
    for (i, (_, expr)) in queries.iter().enumerate() {
        text.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::Value::String(substitute(expr))
        ));
    }
    let dir = tmp_dir("dash");
    let file = dir.join("dashboards.yml");
    std::fs::write(&file, text).unwrap();
    run(Command::new(promtool).args(["check", "rules"]).arg(&file));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn alertmanager_config_is_valid_and_routes_by_severity() {
    let amtool = tool("amtool", "prometheus-alertmanager");
    let file = monitoring_dir().join("alertmanager.yml");
    let out = run(Command::new(&amtool).arg("check-config").arg(&file));
    assert!(out.contains("SUCCESS"), "{out}");
    assert!(out.contains("3 inhibit rules"), "{out}");
    for (labels, receiver) in [
        (&["alertname=GatewayDown", "severity=page"][..], "page"),
        (
            &["alertname=GatewayCircuitOpen", "severity=ticket"][..],
            "ticket",
        ),
        (
            &["alertname=LoadTestInProgress", "severity=info"][..],
            "blackhole",
        ),
        (
            &[
                "alertname=GatewaySLOErrorBudgetBurn",
                "severity=page",
                "loadtest=true",
            ][..],
            "ticket",
        ),
    ] {
        let out = run(Command::new(&amtool)
            .args(["config", "routes", "test"])
            .arg(format!("--config.file={}", file.display()))
            .args(labels));
        assert_eq!(
            out.lines().next().unwrap_or("").trim(),
            receiver,
            "{labels:?}"
        );
    }
}
