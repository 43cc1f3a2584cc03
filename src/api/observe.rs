//! Counts every gRPC call by its final status, when it ends: a stream that
//! started OK and later hit its deadline counts as DEADLINE_EXCEEDED (and
//! is ended there, with that status, as gRPC servers do), one the client
//! dropped as CANCELLED. The layer sits outside authentication,
//! so refusals are counted here too, once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http_body::Frame;

use crate::telemetry::metrics;

#[derive(Clone, Default)]
pub struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let mut end = CallEnd {
            method: super::auth::rpc_name(request.uri().path()),
            started: Instant::now(),
            deadline: request
                .headers()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_timeout),
            done: false,
        };
        Box::pin(async move {
            let response = match inner.call(request).await {
                Ok(r) => r,
                Err(e) => {
                    end.finish("UNKNOWN");
                    return Err(e);
                }
            };
            // Trailers-only: the status is in the headers (refusals, errors
            // before the first message).
            if let Some(code) = status_of(response.headers()) {
                end.finish(code);
                return Ok(response);
            }
            let deadline = end
                .deadline
                .map(|d| Box::pin(tokio::time::sleep_until((end.started + d).into())));
            Ok(response.map(|body| {
                tonic::body::Body::new(Observed {
                    body,
                    end,
                    deadline,
                    expired: false,
                })
            }))
        })
    }
}

/// The call's accounting, done once: by the trailers, or when dropped first.
struct CallEnd {
    method: &'static str,
    started: Instant,
    deadline: Option<Duration>,
    done: bool,
}

impl CallEnd {
    fn finish(&mut self, code: &'static str) {
        if !self.done {
            self.done = true;
            metrics::grpc_request(self.method, code, self.started.elapsed());
        }
    }
}

impl Drop for CallEnd {
    /// A body dropped before its trailers: the client went away, on purpose
    /// or because its deadline passed.
    fn drop(&mut self) {
        let expired = self.deadline.is_some_and(|d| self.started.elapsed() >= d);
        self.finish(if expired {
            "DEADLINE_EXCEEDED"
        } else {
            "CANCELLED"
        });
    }
}

struct Observed {
    body: tonic::body::Body,
    end: CallEnd,
    /// The caller's deadline: the stream ends with DEADLINE_EXCEEDED there,
    /// as gRPC servers do, whether or not the client enforces it.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: bool,
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if let Some(deadline) = self.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                self.expired = true;
                self.end.finish("DEADLINE_EXCEEDED");
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("4"));
                trailers.insert(
                    "grpc-message",
                    http::HeaderValue::from_static("the call's deadline passed"),
                );
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    self.end.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.end.finish("INTERNAL"),
            Poll::Ready(None) => self.end.finish("UNKNOWN"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The canonical name of the `grpc-status` a header map carries.
fn status_of(headers: &http::HeaderMap) -> Option<&'static str> {
    let n: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(super::auth::code_name(tonic::Code::from_i32(n)))
}

/// `grpc-timeout`: at most eight digits and a unit (H, M, S, m, u, n).
fn parse_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_the_spec() {
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("S"), None);
        assert_eq!(parse_timeout("123456789S"), None);
        assert_eq!(parse_timeout("5x"), None);
    }
}
