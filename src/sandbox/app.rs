//! Each deployed service runs as a real HTTP listener on loopback. It answers
//! as the revision its traffic points at would: scripted answers first, then
//! 200. Private services refuse requests without credentials, as Cloud Run
//! does.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;

use super::world::Request;
use super::Shared;

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    project: String,
    location: String,
    service: String,
}

/// Binds a loopback port for the service and serves it; returns its URL.
pub fn spawn(
    shared: Arc<Shared>,
    project: String,
    location: String,
    service: String,
) -> std::io::Result<String> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let stop = shared.shutdown.clone();
    let state = AppState {
        shared,
        project,
        location,
        service,
    };
    let router = Router::new().fallback(serve).with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    Ok(format!("http://{addr}"))
}

async fn serve(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let at = Instant::now();
    let (status, delay, body) = {
        let mut w = st.shared.world();
        let Some(svc) = w.projects.get_mut(&st.project).and_then(|p| {
            p.services
                .get_mut(&(st.location.clone(), st.service.clone()))
        }) else {
            return (StatusCode::NOT_FOUND, "service deleted").into_response();
        };
        let public = svc
            .iam_policy
            .get("bindings")
            .and_then(Value::as_array)
            .is_some_and(|b| {
                b.iter().any(|b| {
                    b.get("role").and_then(Value::as_str) == Some("roles/run.invoker")
                        && b.get("members")
                            .and_then(Value::as_array)
                            .is_some_and(|m| m.iter().any(|m| m.as_str() == Some("allUsers")))
                })
            });
        let revision = serving_revision(svc);
        if !public && !headers.contains_key("authorization") {
            (403, std::time::Duration::ZERO, "Error: Forbidden\nYour client does not have permission to get URL from this server.\n".to_string())
        } else {
            match svc.app_script.pop_front() {
                Some(a) => (a.status, a.delay, a.body),
                None => (
                    200,
                    std::time::Duration::ZERO,
                    format!("Hello from {} ({revision})\n", st.service),
                ),
            }
        }
    };
    {
        let mut w = st.shared.world();
        w.requests.push(Request {
            method: "app.request".into(),
            http_method: method.to_string(),
            path: format!("{}{}", st.service, uri.path()),
            query: uri.query().unwrap_or_default().to_string(),
            status,
            at,
            duration: delay,
            body: vec![],
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                .collect(),
        });
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Bytes::from(body)).into_response()
}

/// The revision with traffic: a pinned REVISION at 100%, else the latest ready.
fn serving_revision(svc: &super::world::Service) -> String {
    let pinned = svc
        .spec
        .get("traffic")
        .and_then(Value::as_array)
        .and_then(|t| {
            t.iter()
                .find(|t| t.get("percent").and_then(Value::as_u64) == Some(100))
                .and_then(|t| {
                    t.get("revision")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
        });
    pinned
        .or_else(|| svc.latest_ready.clone())
        .unwrap_or_else(|| "no-revision".into())
}
