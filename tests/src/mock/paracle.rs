//! Paracle (seed 003): token auth, agents and workflows. The `run` calls stand for the slow
//! LLM-backed operations; give them latency with `--latency /api/v1/agents/run=lognormal:2s:20s`.
//!
//! Field names follow the seed's locustfile: a run answers `"status": "success"` (the
//! single-agent scenario fails any other value) and a workflow run reports
//! `execution_time_seconds` (the workflow scenario fails runs over 60 s).

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::body::{self, json, json_bytes, read_json, MockBody};
use super::state::State;

/// The agents every Paracle mock has (the ids the locustfile picks from).
pub const AGENTS: [&str; 5] = ["coder", "architect", "tester", "reviewer", "documenter"];

/// The workflows every Paracle mock has.
pub const WORKFLOWS: [&str; 3] = ["feature_development", "code_review", "bugfix"];

fn agent(id: &str) -> Value {
    json!({
        "id": id,
        "name": id,
        "description": format!("The {id} agent"),
        "model": "gpt-4-turbo-preview",
        "tools": ["read_file", "list_directory"],
    })
}

/// The body of `GET /api/v1/agents`, rendered once at start.
pub(crate) fn agents_body() -> Bytes {
    let agents: Vec<Value> = AGENTS.iter().map(|id| agent(id)).collect();
    serde_json::to_vec(&json!({ "agents": agents, "total": AGENTS.len() }))
        .map(Bytes::from)
        .unwrap_or_default()
}

/// The body of `GET /api/v1/workflows`, rendered once at start.
pub(crate) fn workflows_body() -> Bytes {
    let workflows: Vec<Value> = WORKFLOWS
        .iter()
        .map(|id| json!({ "id": id, "name": id, "steps": 3 }))
        .collect();
    serde_json::to_vec(&json!({ "workflows": workflows, "total": WORKFLOWS.len() }))
        .map(Bytes::from)
        .unwrap_or_default()
}

/// `GET /api/v1/agents`.
pub(crate) fn list_agents(state: &State) -> Response<MockBody> {
    json_bytes(StatusCode::OK, state.agents_list.clone())
}

/// `GET /api/v1/workflows`.
pub(crate) fn list_workflows(state: &State) -> Response<MockBody> {
    json_bytes(StatusCode::OK, state.workflows_list.clone())
}

/// `GET /api/v1/agents/{id}`: a built-in agent or one created earlier (`agent-N`).
pub(crate) fn get_agent(state: &State, id: &str) -> Response<MockBody> {
    let created = id
        .strip_prefix("agent-")
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n < state.next_id.load(Relaxed));
    if AGENTS.contains(&id) || created {
        json(StatusCode::OK, &agent(id))
    } else {
        body::error(StatusCode::NOT_FOUND, "agent not found")
    }
}

/// A JSON object request body (400 otherwise).
async fn object(body: Incoming) -> Result<Map<String, Value>, Response<MockBody>> {
    match read_json::<Value>(body).await? {
        Value::Object(map) => Ok(map),
        _ => Err(body::error(
            StatusCode::BAD_REQUEST,
            "expected a JSON object",
        )),
    }
}

/// `POST /api/v1/agents`: the body echoed with a fresh `id`, 201.
pub(crate) async fn create_agent(state: &State, body: Incoming) -> Response<MockBody> {
    match object(body).await {
        Ok(mut agent) => {
            let id = format!("agent-{}", state.next_id.fetch_add(1, Relaxed));
            agent.insert("id".to_owned(), id.into());
            json(StatusCode::CREATED, &agent)
        }
        Err(res) => res,
    }
}

fn str_field<'a>(map: &'a Map<String, Value>, key: &str, default: &'a str) -> &'a str {
    map.get(key).and_then(Value::as_str).unwrap_or(default)
}

/// `POST /api/v1/agents/run`: a successful run with a canned output.
pub(crate) async fn run_agent(state: &State, body: Incoming, start: Instant) -> Response<MockBody> {
    let req = match object(body).await {
        Ok(req) => req,
        Err(res) => return res,
    };
    let run = state.next_id.fetch_add(1, Relaxed);
    let agent_id = str_field(&req, "agent_id", "coder");
    let task = str_field(&req, "task", "");
    json(
        StatusCode::OK,
        &json!({
            "status": "success",
            "run_id": format!("run-{run}"),
            "agent_id": agent_id,
            "model": str_field(&req, "model", "gpt-4-turbo-preview"),
            "output": format!("[{agent_id}] simulated answer to: {task}"),
            "usage": { "prompt_tokens": task.len() / 4 + 16, "completion_tokens": 128 },
            "execution_time_seconds": start.elapsed().as_secs_f64(),
        }),
    )
}

/// `POST /api/v1/workflows/run`: a successful run that reports how long it took (the
/// injected latency included).
pub(crate) async fn run_workflow(
    state: &State,
    body: Incoming,
    start: Instant,
) -> Response<MockBody> {
    let req = match object(body).await {
        Ok(req) => req,
        Err(res) => return res,
    };
    let run = state.next_id.fetch_add(1, Relaxed);
    let workflow_id = str_field(&req, "workflow_id", "feature_development");
    json(
        StatusCode::OK,
        &json!({
            "status": "success",
            "run_id": format!("wf-run-{run}"),
            "workflow_id": workflow_id,
            "outputs": { "summary": format!("simulated {workflow_id} run"), "steps_completed": 3 },
            "execution_time_seconds": start.elapsed().as_secs_f64(),
        }),
    )
}
