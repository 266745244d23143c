//! The Meetinity gateway's upstream APIs (seeds 000 and 001): health, hello, echo, users,
//! profile, session tokens and the JWKS.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use super::body::{self, json, json_bytes, read_body, read_json, MockBody, JSON_BODY_LIMIT};
use super::jwt::{TokenError, TokenRequest};
use super::query;
use super::state::State;

/// Number of users `GET /api/users` lists.
pub(crate) const LISTED_USERS: u64 = 20;

/// `cache-control` of the user list.
const USERS_CACHE_CONTROL: HeaderValue = HeaderValue::from_static("public, max-age=30");

/// `GET /health`.
pub(crate) fn health() -> Response<MockBody> {
    json_bytes(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#))
}

/// `GET /api/hello[?name=x]`.
pub(crate) fn hello(parts: &Parts) -> Response<MockBody> {
    match query::get(parts.uri.query(), "name") {
        Some(name) => json(
            StatusCode::OK,
            &json!({ "message": format!("Hello, {name}!") }),
        ),
        None => json_bytes(
            StatusCode::OK,
            Bytes::from_static(br#"{"message":"Hello, World!"}"#),
        ),
    }
}

/// `POST /api/echo`: the request body streamed back with its content type.
pub(crate) fn echo(parts: &Parts, body: Incoming) -> Response<MockBody> {
    let mut res = body::response(StatusCode::OK, MockBody::Stream(body));
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        res.headers_mut().insert(CONTENT_TYPE, content_type.clone());
    }
    res
}

/// The JSON of user `id`.
fn user(id: u64) -> Value {
    json!({
        "id": id,
        "username": format!("user{id}"),
        "email": format!("user{id}@example.com"),
        "name": format!("User {id}"),
        "active": true,
    })
}

/// The body of `GET /api/users`, rendered once at start.
pub(crate) fn users_list_body() -> Bytes {
    let users: Vec<Value> = (1..=LISTED_USERS).map(user).collect();
    serde_json::to_vec(&users)
        .map(Bytes::from)
        .unwrap_or_default()
}

/// `GET /api/users`: twenty users, cacheable for 30 s.
pub(crate) fn list_users(state: &State) -> Response<MockBody> {
    let mut res = json_bytes(StatusCode::OK, state.users_list.clone());
    res.headers_mut().insert(CACHE_CONTROL, USERS_CACHE_CONTROL);
    res
}

/// `GET /api/users/{id}`: any numeric id exists.
pub(crate) fn get_user(id: &str) -> Response<MockBody> {
    match id.parse::<u64>() {
        Ok(id) => json(StatusCode::OK, &user(id)),
        Err(_) => body::error(StatusCode::NOT_FOUND, "user not found"),
    }
}

/// The JSON object of a request body (400 if the body is JSON but not an object).
async fn read_object(body: Incoming) -> Result<Map<String, Value>, Response<MockBody>> {
    match read_json::<Value>(body).await? {
        Value::Object(map) => Ok(map),
        _ => Err(body::error(
            StatusCode::BAD_REQUEST,
            "expected a JSON object",
        )),
    }
}

/// `POST /api/users`: the body echoed with a fresh `id`, 201.
pub(crate) async fn create_user(state: &State, body: Incoming) -> Response<MockBody> {
    match read_object(body).await {
        Ok(mut user) => {
            let id = state.next_id.fetch_add(1, Relaxed) + LISTED_USERS + 1;
            user.insert("id".to_owned(), id.into());
            json(StatusCode::CREATED, &user)
        }
        Err(res) => res,
    }
}

/// `PUT /api/users/{id}`: the user with the body's fields merged in.
pub(crate) async fn update_user(id: &str, body: Incoming) -> Response<MockBody> {
    let Ok(id) = id.parse::<u64>() else {
        return body::error(StatusCode::NOT_FOUND, "user not found");
    };
    match read_object(body).await {
        Ok(fields) => {
            let mut user = user(id);
            if let Value::Object(user) = &mut user {
                user.extend(fields);
                user.insert("id".to_owned(), id.into());
            }
            json(StatusCode::OK, &user)
        }
        Err(res) => res,
    }
}

/// `GET|PUT|POST /api/profile`: the caller's profile, `user_id` from `x-user-id` (set by
/// the gateway after authentication); a JSON object body is merged in.
pub(crate) async fn profile(parts: &Parts, body: Incoming) -> Response<MockBody> {
    let user_id = parts.headers.get("x-user-id").and_then(|v| v.to_str().ok());
    let mut profile = Map::new();
    profile.insert(
        "user_id".to_owned(),
        user_id.map_or(Value::Null, Value::from),
    );
    profile.insert("display_name".to_owned(), "Mock User".into());
    profile.insert("bio".to_owned(), "Simulated by mock-upstream".into());
    profile.insert("timezone".to_owned(), "UTC".into());
    let updated = parts.method != Method::GET && parts.method != Method::HEAD;
    if updated {
        let bytes = match read_body(body, JSON_BODY_LIMIT).await {
            Ok(bytes) => bytes,
            Err(res) => return res,
        };
        if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&bytes) {
            profile.extend(fields);
        }
    }
    profile.insert("updated".to_owned(), updated.into());
    json(StatusCode::OK, &profile)
}

/// Issues a token for a token request body, with `token_type` as given.
pub(crate) async fn issue_token(
    state: &State,
    body: Incoming,
    token_type: &'static str,
) -> Response<MockBody> {
    let req = match read_json::<TokenRequest>(body).await {
        Ok(req) => req,
        Err(res) => return res,
    };
    match state.keys.issue(&req) {
        Ok(issued) => json(
            StatusCode::OK,
            &json!({
                "access_token": issued.token,
                "token_type": token_type,
                "expires_in": issued.expires_in,
            }),
        ),
        Err(TokenError::Sign(e)) => {
            tracing::error!(error = %e, "signing a token failed");
            body::error(StatusCode::INTERNAL_SERVER_ERROR, "signing failed")
        }
        Err(e) => body::error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// `GET /.well-known/jwks.json`.
pub(crate) fn jwks(state: &State) -> Response<MockBody> {
    json_bytes(
        StatusCode::OK,
        state.keys.jwks(state.jwks_rotated.load(Relaxed)),
    )
}
