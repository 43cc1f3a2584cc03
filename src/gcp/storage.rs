//! Cloud Storage JSON API v1: the bucket for sources and build logs.

use bytes::Bytes;

use crate::pipeline::archive::Blob;
use reqwest::header::{CONTENT_TYPE, RANGE};
use reqwest::Method;
use serde::{Deserialize, Deserializer};
use serde_json::json;

use super::error::GcpError;
use super::http::{segment, Transport};
use crate::pipeline::error::Code;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    pub name: String,
    #[serde(default, deserialize_with = "int64")]
    pub project_number: String,
}

#[derive(Debug, Deserialize)]
pub struct Object {
    #[serde(deserialize_with = "int64")]
    pub generation: String,
    #[serde(default, deserialize_with = "int64")]
    pub size: String,
}

/// int64 fields are JSON strings in proto3 JSON; accept numbers too.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    Ok(match N::deserialize(d)? {
        N::S(s) => s,
        N::I(i) => i.to_string(),
    })
}

pub async fn get_bucket(t: &Transport, bucket: &str) -> Result<Option<Bucket>, GcpError> {
    let url = format!("{}/storage/v1/b/{}", t.endpoints.storage, segment(bucket));
    match t
        .json("storage.buckets.get", t.request(Method::GET, url))
        .await
    {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is(Code::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn insert_bucket(
    t: &Transport,
    project: &str,
    location: &str,
    bucket: &str,
) -> Result<Bucket, GcpError> {
    let url = format!("{}/storage/v1/b", t.endpoints.storage);
    let body = json!({
        "name": bucket,
        "location": location,
        "storageClass": "STANDARD",
        "iamConfiguration": {
            "uniformBucketLevelAccess": {"enabled": true},
            "publicAccessPrevention": "enforced",
        },
        // Sources and logs are only needed while a deploy runs and shortly after.
        "lifecycle": {"rule": [{"action": {"type": "Delete"}, "condition": {"age": 30}}]},
        "labels": {"managed-by": "deployd"},
    });
    t.json(
        "storage.buckets.insert",
        t.request(Method::POST, url)
            .query(&[("project", project)])
            .json(&body),
    )
    .await
}

pub async fn get_object(
    t: &Transport,
    bucket: &str,
    object: &str,
) -> Result<Option<Object>, GcpError> {
    let url = format!(
        "{}/storage/v1/b/{}/o/{}",
        t.endpoints.storage,
        segment(bucket),
        segment(object)
    );
    match t
        .json("storage.objects.get", t.request(Method::GET, url))
        .await
    {
        Ok(o) => Ok(Some(o)),
        Err(e) if e.is(Code::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Simple media upload; the returned generation pins the build's source.
pub async fn upload(
    t: &Transport,
    bucket: &str,
    object: &str,
    data: Bytes,
) -> Result<Object, GcpError> {
    let url = format!(
        "{}/upload/storage/v1/b/{}/o",
        t.endpoints.storage,
        segment(bucket)
    );
    t.json(
        "storage.objects.insert",
        t.request(Method::POST, url)
            .query(&[("uploadType", "media"), ("name", object)])
            .header(CONTENT_TYPE, "application/gzip")
            .body(data),
    )
    .await
}

/// Resumable uploads send chunks of this size (a multiple of 256 KiB).
pub const DEFAULT_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Consecutive failed chunks tolerated before the upload is given up.
const MAX_CHUNK_FAILURES: u32 = 5;

/// Resumable upload: a session, then chunks; a chunk that fails is resumed
/// from what the server says it has, not resent from the start.
pub async fn upload_resumable(
    t: &Transport,
    bucket: &str,
    object: &str,
    data: &Blob,
    chunk: usize,
) -> Result<Object, GcpError> {
    const METHOD: &str = "storage.objects.insert";
    let total = data.len() as usize;
    let url = format!(
        "{}/upload/storage/v1/b/{}/o",
        t.endpoints.storage,
        segment(bucket)
    );
    let resp = t
        .send(
            METHOD,
            t.request(Method::POST, url)
                .query(&[("uploadType", "resumable"), ("name", object)])
                .header("X-Upload-Content-Type", "application/gzip")
                .header("X-Upload-Content-Length", total.to_string())
                .json(&json!({"name": object, "contentType": "application/gzip"})),
        )
        .await?;
    let session = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| GcpError::Protocol {
            method: METHOD,
            message: "resumable upload session without a Location header".into(),
        })?;
    let mut offset = 0usize;
    let mut failures = 0;
    loop {
        let end = (offset + chunk).min(total);
        let range = if total == 0 {
            "bytes */0".to_string()
        } else {
            format!("bytes {offset}-{}/{total}", end - 1)
        };
        let put = t
            .request(Method::PUT, session.clone())
            .header(reqwest::header::CONTENT_RANGE, range)
            .body(read_blob(METHOD, data, offset, end - offset).await?);
        let answer = match t.send_unchecked(METHOD, put).await {
            Ok(resp) => chunk_answer(METHOD, resp).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(ChunkAnswer::Done(o)) => return Ok(o),
            Ok(ChunkAnswer::Have(n)) => {
                failures = 0;
                offset = n;
            }
            Err(e) if e.is_transient() && failures < MAX_CHUNK_FAILURES => {
                failures += 1;
                tracing::debug!(error = %e, offset, "upload chunk failed; asking the server where to resume");
                let query = t
                    .request(Method::PUT, session.clone())
                    .header(reqwest::header::CONTENT_RANGE, format!("bytes */{total}"));
                match t.send_unchecked(METHOD, query).await {
                    Ok(resp) => match chunk_answer(METHOD, resp).await {
                        Ok(ChunkAnswer::Done(o)) => return Ok(o),
                        Ok(ChunkAnswer::Have(n)) => offset = n,
                        Err(e) if e.is_transient() => {}
                        Err(e) => return Err(e),
                    },
                    Err(e) => tracing::debug!(error = %e, "upload status query failed"),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Bytes `offset..offset + len` of `data`, read off the async workers.
pub async fn read_blob(
    method: &'static str,
    data: &Blob,
    offset: usize,
    len: usize,
) -> Result<Bytes, GcpError> {
    let blob = data.clone();
    tokio::task::spawn_blocking(move || blob.read_at(offset as u64, len))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map(Bytes::from)
        .map_err(|source| GcpError::Read { method, source })
}

enum ChunkAnswer {
    Done(Object),
    /// The server holds this many bytes (308 Resume Incomplete).
    Have(usize),
}

async fn chunk_answer(
    method: &'static str,
    resp: reqwest::Response,
) -> Result<ChunkAnswer, GcpError> {
    match resp.status().as_u16() {
        200 | 201 => {
            let body = resp
                .bytes()
                .await
                .map_err(|source| GcpError::Transport { method, source })?;
            serde_json::from_slice(&body)
                .map(ChunkAnswer::Done)
                .map_err(|source| GcpError::Decode { method, source })
        }
        308 => {
            // "Range: bytes=0-N" means N+1 bytes are stored; no header, none.
            let have = resp
                .headers()
                .get(RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|r| r.rsplit('-').next())
                .and_then(|n| n.parse::<usize>().ok())
                .map_or(0, |n| n + 1);
            Ok(ChunkAnswer::Have(have))
        }
        _ => Err(Transport::error_of(method, resp).await),
    }
}

/// Ranged read from `offset`: `None` if the object does not exist yet,
/// empty bytes if nothing is new (416).
pub async fn read_from(
    t: &Transport,
    bucket: &str,
    object: &str,
    offset: u64,
) -> Result<Option<Bytes>, GcpError> {
    const METHOD: &str = "storage.objects.get";
    let url = format!(
        "{}/storage/v1/b/{}/o/{}",
        t.endpoints.storage,
        segment(bucket),
        segment(object)
    );
    let rb = t
        .request(Method::GET, url)
        .query(&[("alt", "media")])
        .header(RANGE, format!("bytes={offset}-"));
    match t.send(METHOD, rb).await {
        Ok(resp) => {
            let full = resp.status() == reqwest::StatusCode::OK;
            let body = resp.bytes().await.map_err(|source| GcpError::Transport {
                method: METHOD,
                source,
            })?;
            // A server that ignores Range sends everything: skip what we have.
            if full {
                let skip = (offset as usize).min(body.len());
                return Ok(Some(body.slice(skip..)));
            }
            Ok(Some(body))
        }
        Err(e) if e.is(Code::NotFound) => Ok(None),
        Err(GcpError::Api {
            http_status: 416, ..
        }) => Ok(Some(Bytes::new())),
        Err(e) => Err(e),
    }
}
