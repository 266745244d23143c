//! The meetings service (seed 004): create, list, get, join, leave, network-quality
//! reports. (Its WebSocket lives in [`super::ws`].)
//!
//! Meetings live in memory, at most [`MAX_MEETINGS`]; creating one more evicts the oldest.
//! Participants are counted, not listed, so a join storm costs no memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use http::request::Parts;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{self, json, read_body, MockBody, JSON_BODY_LIMIT};
use super::query;
use super::state::State;

/// Most meetings kept.
pub const MAX_MEETINGS: usize = 100_000;
/// Most participants in one meeting (a join past it gets 409).
pub const MAX_PARTICIPANTS: u64 = 10_000;
/// Longest title kept, in characters.
const MAX_TITLE_CHARS: usize = 256;
/// Meetings listed when `?limit=` is absent, and the most it may ask for.
const DEFAULT_LIST: usize = 20;
const MAX_LIST: usize = 100;

#[derive(Debug, Clone)]
struct Meeting {
    id: u64,
    title: String,
    host_id: Option<String>,
    participants: u64,
    created_at: u64,
}

impl Meeting {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "title": self.title,
            "host_id": self.host_id,
            "participants": self.participants,
            "status": if self.participants > 0 { "active" } else { "scheduled" },
            "created_at": self.created_at,
        })
    }
}

#[derive(Debug, Default)]
struct Store {
    next_id: u64,
    by_id: HashMap<u64, Meeting>,
    /// Ids in creation order, for eviction and listing.
    order: VecDeque<u64>,
}

/// Why a join or leave did not happen.
#[derive(Debug, Clone, Copy)]
enum Refused {
    NotFound,
    Full,
}

/// The meetings, bounded.
#[derive(Debug, Default)]
pub(crate) struct Meetings {
    store: RwLock<Store>,
}

#[derive(Debug, Default, Deserialize)]
struct NewMeeting {
    title: Option<String>,
    host_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct QualityReport {
    /// Percent, 0..=100.
    #[serde(default)]
    packet_loss: f64,
    #[serde(default)]
    latency_ms: f64,
    #[serde(default)]
    jitter_ms: f64,
}

/// Parses an optional JSON body: empty is the default value, anything else must parse.
async fn optional_json<T: Default + serde::de::DeserializeOwned>(
    body: Incoming,
) -> Result<T, Response<MockBody>> {
    let bytes = read_body(body, JSON_BODY_LIMIT).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| body::error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
}

fn not_found() -> Response<MockBody> {
    body::error(StatusCode::NOT_FOUND, "meeting not found")
}

impl Meetings {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn create(&self, new: NewMeeting) -> Value {
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut store = self.write();
        store.next_id += 1;
        let id = store.next_id;
        let title = new.title.unwrap_or_else(|| format!("Meeting {id}"));
        let meeting = Meeting {
            id,
            title: title.chars().take(MAX_TITLE_CHARS).collect(),
            host_id: new
                .host_id
                .map(|h| h.chars().take(MAX_TITLE_CHARS).collect()),
            participants: 0,
            created_at,
        };
        let json = meeting.to_json();
        while store.order.len() >= MAX_MEETINGS {
            if let Some(oldest) = store.order.pop_front() {
                store.by_id.remove(&oldest);
            }
        }
        store.order.push_back(id);
        store.by_id.insert(id, meeting);
        json
    }

    fn get(&self, id: u64) -> Option<Value> {
        self.read().by_id.get(&id).map(Meeting::to_json)
    }

    /// Adds (join) or removes (leave) one participant; the new count.
    fn change(&self, id: u64, join: bool) -> Result<u64, Refused> {
        let mut store = self.write();
        let meeting = store.by_id.get_mut(&id).ok_or(Refused::NotFound)?;
        if join {
            if meeting.participants >= MAX_PARTICIPANTS {
                return Err(Refused::Full);
            }
            meeting.participants += 1;
        } else {
            meeting.participants = meeting.participants.saturating_sub(1);
        }
        Ok(meeting.participants)
    }

    fn list(&self, limit: usize) -> Value {
        let store = self.read();
        let meetings: Vec<Value> = store
            .order
            .iter()
            .rev()
            .filter_map(|id| store.by_id.get(id))
            .take(limit)
            .map(Meeting::to_json)
            .collect();
        json!({ "meetings": meetings, "total": store.by_id.len() })
    }
}

fn parse_id(id: &str) -> Option<u64> {
    id.parse().ok()
}

/// `POST /api/meetings`: 201 with the new meeting (body optional: `title`, `host_id`).
pub(crate) async fn create(state: &State, body: Incoming) -> Response<MockBody> {
    match optional_json::<NewMeeting>(body).await {
        Ok(new) => json(StatusCode::CREATED, &state.meetings.create(new)),
        Err(res) => res,
    }
}

/// `GET /api/meetings[?limit=n]`: the newest meetings first.
pub(crate) fn list(state: &State, parts: &Parts) -> Response<MockBody> {
    let limit = query::get(parts.uri.query(), "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(DEFAULT_LIST)
        .min(MAX_LIST);
    json(StatusCode::OK, &state.meetings.list(limit))
}

/// `GET /api/meetings/{id}`.
pub(crate) fn get(state: &State, id: &str) -> Response<MockBody> {
    match parse_id(id).and_then(|id| state.meetings.get(id)) {
        Some(meeting) => json(StatusCode::OK, &meeting),
        None => not_found(),
    }
}

/// `POST /api/meetings/{id}/join` (`join`) or `/leave`: the new participant count.
pub(crate) async fn join_or_leave(
    state: &State,
    id: &str,
    body: Incoming,
    join: bool,
) -> Response<MockBody> {
    // The body (who joins) is not kept, but it is read so the connection stays reusable.
    if let Err(res) = read_body(body, JSON_BODY_LIMIT).await {
        return res;
    }
    let Some(id) = parse_id(id) else {
        return not_found();
    };
    match state.meetings.change(id, join) {
        Ok(participants) => json(
            StatusCode::OK,
            &json!({ "meeting_id": id, "participants": participants, "joined": join }),
        ),
        Err(Refused::NotFound) => not_found(),
        Err(Refused::Full) => body::error(StatusCode::CONFLICT, "meeting is full"),
    }
}

/// `POST /api/meetings/{id}/network-quality`: grades a client's report and recommends a
/// bitrate. `packet_loss` is a percentage.
pub(crate) async fn network_quality(state: &State, id: &str, body: Incoming) -> Response<MockBody> {
    let report = match optional_json::<QualityReport>(body).await {
        Ok(report) => report,
        Err(res) => return res,
    };
    let Some(id) = parse_id(id).filter(|id| state.meetings.get(*id).is_some()) else {
        return not_found();
    };
    let QualityReport {
        packet_loss,
        latency_ms,
        jitter_ms,
    } = report;
    let valid = |v: f64| v.is_finite() && v >= 0.0;
    if !(valid(packet_loss) && valid(latency_ms) && valid(jitter_ms)) || packet_loss > 100.0 {
        return body::error(
            StatusCode::BAD_REQUEST,
            "packet_loss must be 0..=100, latency_ms and jitter_ms >= 0",
        );
    }
    let (quality, bitrate) = grade(packet_loss, latency_ms, jitter_ms);
    json(
        StatusCode::OK,
        &json!({
            "meeting_id": id,
            "quality": quality,
            "recommended_bitrate": bitrate,
            "audio_only": packet_loss > 70.0,
        }),
    )
}

/// Quality grade and recommended bitrate (kbit/s) of a network report.
fn grade(packet_loss: f64, latency_ms: f64, jitter_ms: f64) -> (&'static str, u32) {
    if packet_loss <= 2.0 && latency_ms <= 150.0 && jitter_ms <= 30.0 {
        ("good", 2500)
    } else if packet_loss <= 10.0 && latency_ms <= 400.0 && jitter_ms <= 100.0 {
        ("fair", 1000)
    } else if packet_loss <= 70.0 {
        ("poor", 300)
    } else {
        ("poor", 64)
    }
}
