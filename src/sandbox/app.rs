//! Each deployed service runs as a real HTTP listener on loopback, and each
//! tagged traffic target gets one of its own. A listener answers as the
//! revision its traffic points at would: that revision's behaviour if a test
//! set one, else the service's scripted answers, else 200. Private services
//! want an identity token the sandbox minted, with the right audience, for an
//! identity allowed to invoke; as Cloud Run does, they answer 403 without
//! one and 401 to a token that does not check out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rand::Rng;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::world::{Request, Served, Service};
use super::Shared;

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    project: String,
    location: String,
    service: String,
    /// A tag's listener serves this revision only.
    revision: Option<String>,
}

/// Binds a loopback port for the service (or one tagged revision) and
/// serves it until `stop` (or the sandbox's shutdown); returns its URL.
pub fn spawn(
    shared: Arc<Shared>,
    project: String,
    location: String,
    service: String,
    revision: Option<String>,
    stop: CancellationToken,
) -> std::io::Result<String> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let shutdown = shared.shutdown.clone();
    let state = AppState {
        shared,
        project,
        location,
        service,
        revision,
    };
    let router = Router::new().fallback(serve).with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = shutdown.cancelled() => {}
                }
            })
            .await;
    });
    Ok(format!("http://{addr}"))
}

fn is_public(svc: &Service) -> bool {
    svc.iam_policy
        .get("bindings")
        .and_then(Value::as_array)
        .is_some_and(|b| {
            b.iter().any(|b| {
                b.get("role").and_then(Value::as_str) == Some("roles/run.invoker")
                    && b.get("members")
                        .and_then(Value::as_array)
                        .is_some_and(|m| m.iter().any(|m| m.as_str() == Some("allUsers")))
            })
        })
}

/// The revision a request lands on: the pinned one, or one drawn by the
/// traffic split (LATEST meaning the latest ready revision).
fn pick_revision(svc: &Service, pinned: Option<&str>) -> Option<String> {
    if let Some(r) = pinned {
        return Some(r.to_string());
    }
    let targets: Vec<(Option<String>, u64)> = svc
        .traffic_targets()
        .filter_map(|t| {
            let percent = t.get("percent").and_then(Value::as_u64)?;
            let revision = t
                .get("revision")
                .and_then(Value::as_str)
                .map(str::to_string);
            (percent > 0).then_some((revision, percent))
        })
        .collect();
    let total: u64 = targets.iter().map(|(_, p)| p).sum();
    let chosen = if total == 0 {
        None
    } else {
        let mut x = rand::rng().random_range(0..total);
        targets.into_iter().find(|(_, p)| {
            if x < *p {
                true
            } else {
                x -= p;
                false
            }
        })
    };
    match chosen {
        Some((Some(r), _)) => Some(r),
        _ => svc.latest_ready.clone(),
    }
}

async fn serve(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    request_body: Bytes,
) -> Response {
    let at = Instant::now();
    let mut served = None;
    let mut native_port = None;
    let (status, delay, body) = {
        let mut guard = st.shared.world();
        let w = &mut *guard;
        let invoke_allowed = w
            .projects
            .get(&st.project)
            .is_some_and(|p| p.permissions.contains("run.routes.invoke"));
        let Some(svc) = w.projects.get_mut(&st.project).and_then(|p| {
            p.services
                .get_mut(&(st.location.clone(), st.service.clone()))
        }) else {
            return (StatusCode::NOT_FOUND, "service deleted").into_response();
        };
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let audiences: Vec<&str> = std::iter::once(svc.uri.as_str())
            .chain(svc.tags.values().map(|t| t.uri.as_str()))
            .collect();
        let token_ok = token
            .and_then(|t| w.id_tokens.get(t))
            .is_some_and(|(aud, _)| audiences.contains(&aud.trim_end_matches('/')));
        let revision = pick_revision(svc, st.revision.as_deref());
        let rev = revision
            .as_ref()
            .and_then(|r| svc.revisions.iter().find(|x| &x.name == r));
        let behavior = rev.and_then(|r| r.behavior.clone());
        let port_here = revision.as_ref().and_then(|r| {
            w.processes
                .get(&(
                    st.project.clone(),
                    st.location.clone(),
                    st.service.clone(),
                    r.clone(),
                ))
                .map(|p| p.port)
        });
        let misbehaviour = rev.map(|r| r.misbehaviour.clone()).unwrap_or_default();
        if !is_public(svc) && token.is_none() {
            (403, Duration::ZERO, "Error: Forbidden\nYour client does not have permission to get URL from this server.\n".to_string())
        } else if !is_public(svc) && !token_ok {
            (
                401,
                Duration::ZERO,
                "Error: Unauthorized\nYour client does not have permission to the requested URL.\n"
                    .to_string(),
            )
        } else if !is_public(svc) && !invoke_allowed {
            (403, Duration::ZERO, "Error: Forbidden\nYour client does not have permission to get URL from this server.\n".to_string())
        } else {
            native_port = port_here;
            let (status, delay, body) = if let Some(b) = behavior {
                (b.status, b.delay, b.body)
            } else if let Some(a) = svc.app_script.pop_front() {
                (a.status, a.delay, a.body)
            } else {
                let r = revision.clone().unwrap_or_else(|| "no-revision".into());
                (
                    200,
                    Duration::ZERO,
                    format!("Hello from {} ({r})\n", st.service),
                )
            };
            let delay = delay + misbehaviour.added_latency;
            let fails = misbehaviour.error_rate > 0.0
                && rand::rng().random_bool(misbehaviour.error_rate.clamp(0.0, 1.0));
            let (status, body) = if fails {
                // An injected error never reaches the app.
                native_port = None;
                (misbehaviour.error_status, "injected error\n".to_string())
            } else {
                (status, body)
            };
            if let Some(r) = &revision {
                served = Some(Served {
                    project: st.project.clone(),
                    location: st.location.clone(),
                    service: st.service.clone(),
                    revision: r.clone(),
                    at: std::time::SystemTime::now(),
                    status,
                    latency: delay,
                });
            }
            (status, delay, body)
        }
    };
    // The revision's own process answers, when it runs one.
    let mut answer_headers = vec![];
    let (status, body) = match native_port {
        Some(port) => match forward(port, &method, &uri, &headers, request_body).await {
            Ok((code, h, b)) => {
                answer_headers = h;
                (code, b)
            }
            Err(e) => (
                503,
                Bytes::from(format!("the revision's process did not answer: {e}\n")),
            ),
        },
        None => (status, Bytes::from(body)),
    };
    if let Some(s) = served.as_mut() {
        s.status = status;
        s.latency = at.elapsed().max(delay);
    }
    let limits = &st.shared.config.limits;
    // One lock for both records: this is every request a service serves.
    {
        let mut w = st.shared.world();
        if let Some(s) = served {
            w.serve(s, limits);
        }
        w.record(
            Request {
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
            },
            limits,
        );
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (code, body).into_response();
    for (k, v) in answer_headers {
        resp.headers_mut().insert(k, v);
    }
    resp
}

/// Headers a proxy does not pass on.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

type Answer = (
    u16,
    Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    Bytes,
);

/// The request, to the revision's process on loopback.
async fn forward(
    port: u16,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Answer, String> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap_or_default()
    });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let m = reqwest::Method::from_bytes(method.as_str().as_bytes()).map_err(|e| e.to_string())?;
    let mut rb = client.request(m, format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        if !hop_by_hop(k.as_str()) {
            rb = rb.header(k.as_str(), v.as_bytes());
        }
    }
    let resp = rb.body(body).send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let kept: Vec<_> = resp
        .headers()
        .iter()
        .filter(|(k, _)| !hop_by_hop(k.as_str()))
        .filter_map(|(k, v)| {
            Some((
                axum::http::HeaderName::from_bytes(k.as_str().as_bytes()).ok()?,
                axum::http::HeaderValue::from_bytes(v.as_bytes()).ok()?,
            ))
        })
        .collect();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, kept, bytes))
}
