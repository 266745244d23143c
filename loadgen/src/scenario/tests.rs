#![allow(clippy::unwrap_used)]

use super::*;

const GOOD: &str = r#"
name = "t"
thresholds = ["p95<350ms"]
[run]
users = 4
run_time = "10s"
[preset.spike]
stages = [{ duration = "1s", target = 10 }, { duration = "1s", target = 0 }]
thresholds = ["error_rate<1%"]
[[fault]]
at = "2s"
duration = "1s"
error_rate = 0.1
[[user]]
name = "A"
weight = 2
wait_time = "between(10ms, 20ms)"
vars = { tenant = "{{choice(t1, t2)}}" }
[[user.on_start]]
method = "POST"
path = "/api/auth/session"
json = { username = "u{{user_index}}", password = "pw" }
extract = { token = "access_token" }
[[user.task]]
weight = 3
path = "/api/users/{{randint(1, 9)}}"
headers = { Authorization = "Bearer {{token}}" }
checks = [{ status = 200 }, { json = "id", exists = true }, { slower_than = "1s" }]
[[user.task]]
name = "journey"
[[user.task.step]]
method = "post"
path = "/api/events"
json = { tenant = "{{tenant}}", tokens = "{{randint(100, 5100)}}" }
expect_status = [202]
[[user.task.step]]
path = "/api/usage/{{tenant}}"
"#;

#[test]
fn a_good_scenario_builds() {
    let s = Scenario::from_toml(GOOD).unwrap();
    assert_eq!(s.classes.len(), 1);
    let a = &s.classes[0];
    assert_eq!(a.tasks.len(), 2);
    assert_eq!(a.tasks[1].steps.len(), 2);
    assert_eq!(a.tasks[0].steps[0].name, "/api/users/[randint]");
    assert_eq!(
        a.wait,
        WaitTime::Between(Duration::from_millis(10), Duration::from_millis(20))
    );
    assert_eq!(s.run.thresholds.len(), 1);
    let spike = s.spec(Some("spike")).unwrap();
    assert_eq!(spike.thresholds.len(), 2);
    assert!(matches!(
        spike.plan().unwrap(),
        crate::plan::Plan::Stages(_)
    ));
    assert_eq!(s.faults.len(), 1);
    assert_eq!(s.stat_names.len(), 4);
    assert!(s.spec(Some("nope")).is_err());
}

#[test]
fn every_error_has_its_key_path() {
    let bad = r#"
thresholds = ["p95<fast"]
[run]
spawn_rate = 0
run_time = "soon"
[[user]]
name = "A"
weight = 0
wait_time = "between(3s, 1s)"
[[user.task]]
path = "/x/{{tokn}}"
headers = { "bad header" = "v" }
checks = [{ status = 200, slower_than = "1s" }]
[[user.task]]
weight = 0
path = "no-slash"
payload = "huge"
[[user.on_start]]
path = "/a"
weight = 2
"#;
    let errs = Scenario::from_toml(bad).unwrap_err().errors;
    let joined = errs.join("\n");
    for want in [
        "thresholds[0]: bad threshold",
        "run_time: bad duration",
        "spawn_rate: must be above 0",
        "user[0].weight: must be at least 1",
        "user[0].wait_time: bad wait_time",
        "user[0].task[0].path: unknown variable \"tokn\"",
        "user[0].task[0].headers.bad header: not a valid header name",
        "user[0].task[0].checks[0]: a check has exactly one",
        "user[0].task[1].weight: must be at least 1",
        "user[0].task[1].path: must start with /",
        "user[0].task[1].payload: bad size",
        "user[0].on_start[0].weight: only tasks have a weight",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
}

#[test]
fn unknown_fields_and_classes_are_rejected() {
    let e = Scenario::from_toml("[[user]]\nname = \"A\"\nwieght = 2\n").unwrap_err();
    assert!(e.to_string().contains("wieght"), "{e}");
    let e = Scenario::from_toml(
        "[run]\nuser_classes = [\"B\"]\n[[user]]\nname = \"A\"\n[[user.task]]\npath = \"/\"\n",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("run.user_classes: unknown user class \"B\""),
        "{e}"
    );
    let s = Scenario::from_toml("[[user]]\nname = \"A\"\n[[user.task]]\npath = \"/\"\n").unwrap();
    assert_eq!(s.select_classes(Some(&["A".into()])).unwrap(), vec![0]);
    assert!(s.select_classes(Some(&["Z".into()])).is_err());
}
