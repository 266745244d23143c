//! deploy/: Kubernetes manifests validated offline against the Kubernetes
//! schemas (the `kubernetes-validate` PyPI package ships them), kustomize
//! and compose references, Dockerfile targets (deploy/validate.py), and the
//! CI workflows run what the README says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use e2e::harness::{tool, workspace};

#[test]
fn manifests_compose_and_dockerfile_validate_offline() {
    let python = tool("python3", "python3");
    let ok = Command::new(&python)
        .args(["-c", "import kubernetes_validate, yaml"])
        .status()
        .unwrap()
        .success();
    assert!(
        ok,
        "python module kubernetes_validate missing: pip install kubernetes-validate (scripts/test.sh does)"
    );
    let out = Command::new(python)
        .arg(workspace().join("deploy/validate.py"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "deploy/validate.py failed:\n{text}");
    assert!(text.contains(", 0 errors"), "{text}");
}

#[test]
fn workflows_run_the_readme_commands() {
    let root = workspace();
    let ci = std::fs::read_to_string(root.join(".github/workflows/ci.yml")).unwrap();
    assert!(ci.contains(".ci/run"), "ci.yml must run .ci/run");
    let nightly = std::fs::read_to_string(root.join(".github/workflows/nightly-load.yml")).unwrap();
    for needle in [
        "schedule:",
        "cron:",
        "meetinity-sla.toml",
        "--junit",
        "--html",
        "--csv",
        "upload-artifact",
    ] {
        assert!(nightly.contains(needle), "nightly-load.yml lacks {needle}");
    }
}
