//! Cloud Build emulation. A build reads its source archive from the bucket,
//! "runs" its steps (a `docker build` step walks the Dockerfile's
//! instructions), writes log lines to `log-{id}.txt` in the logs bucket as
//! time passes, and on success pushes its images into Artifact Registry.

use std::io::Read;
use std::time::Instant;

use axum::response::Response;
use flate2::read::GzDecoder;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::faults::BuildFault;
use super::routes::{error, ok, put_object};
use super::world::{now_rfc3339, Bucket, Build, Unpacked, World};
use super::SandboxConfig;

/// A build that names no service account runs as the project's default;
/// one that is missing or disabled refuses the build. (The status and
/// wording are this emulator's: the contract does not give them.)
fn default_service_account_unusable(w: &World, pk: &str) -> Option<Response> {
    let p = w.projects.get(pk)?;
    let Some(email) = &p.default_build_service_account else {
        return Some(error(
            400,
            "INVALID_ARGUMENT",
            "the project has no default build service account: build.service_account must be set",
        ));
    };
    // The legacy Cloud Build account is Google-managed, not the project's.
    if email.ends_with("@cloudbuild.gserviceaccount.com") {
        return None;
    }
    match p.service_accounts.get(email) {
        Some(false) => None,
        Some(true) => Some(error(
            400,
            "FAILED_PRECONDITION",
            &format!("the build's service account {email} is disabled"),
        )),
        None => Some(error(
            400,
            "FAILED_PRECONDITION",
            &format!("the build's service account {email} does not exist"),
        )),
    }
}

/// Creates a build and its schedule; answers with the create Operation.
pub fn create(w: &mut World, cfg: &SandboxConfig, pk: &str, req: Value, now: Instant) -> Response {
    let storage = req
        .pointer("/source/storageSource")
        .cloned()
        .unwrap_or(Value::Null);
    let (Some(bucket), Some(object)) = (
        storage.get("bucket").and_then(Value::as_str),
        storage.get("object").and_then(Value::as_str),
    ) else {
        return error(
            400,
            "INVALID_ARGUMENT",
            "source.storageSource.bucket and .object are required",
        );
    };
    if req
        .get("steps")
        .and_then(Value::as_array)
        .is_none_or(|s| s.is_empty())
    {
        return error(
            400,
            "INVALID_ARGUMENT",
            "invalid build: must specify at least one build step",
        );
    }
    if req.get("serviceAccount").is_some() && req.get("logsBucket").is_none() {
        return error(400, "INVALID_ARGUMENT", "if 'build.service_account' is specified, the build must either (a) specify 'build.logs_bucket', (b) use the REGIONAL_USER_OWNED_BUCKET build.options.default_logs_bucket_behavior option, or (c) use either CLOUD_LOGGING_ONLY / NONE logging options: invalid argument");
    }
    if req.get("serviceAccount").is_none() {
        if let Some(refused) = default_service_account_unusable(w, pk) {
            return refused;
        }
    }
    let n = w.next_id();
    let id = format!(
        "{:08x}-4790-494c-a64c-{:012x}",
        n.wrapping_mul(2654435761) & 0xffff_ffff,
        n
    );
    let mut req = req;
    if req.get("logsBucket").is_none() {
        // Cloud Build's own default: a Google-owned bucket per project
        // number (gcloud streams the log from it).
        let number = w
            .projects
            .get(pk)
            .map(|p| p.number.clone())
            .unwrap_or_default();
        let default = format!("{number}.cloudbuild-logs.googleusercontent.com");
        w.buckets.entry(default.clone()).or_insert_with(|| Bucket {
            project_number: number,
            location: "US".into(),
            create_time: now_rfc3339(),
            objects: Default::default(),
        });
        req["logsBucket"] = json!(format!("gs://{default}"));
    }
    let logs_bucket = req
        .get("logsBucket")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (log_bucket_name, prefix) = split_gs(&logs_bucket);
    let log_object = if prefix.is_empty() {
        format!("log-{id}.txt")
    } else {
        format!("{prefix}/log-{id}.txt")
    };

    // Fetch the source the way Cloud Build does: the pinned generation.
    let want_gen = storage.get("generation").and_then(|g| {
        g.as_str()
            .map(str::to_string)
            .or_else(|| g.as_i64().map(|i| i.to_string()))
    });
    let source = w
        .buckets
        .get(bucket)
        .and_then(|b| b.objects.get(object))
        .filter(|o| {
            want_gen
                .as_deref()
                .is_none_or(|g| g == o.generation.to_string())
        });
    let fault = w.build_faults.pop_front();

    let mut lines: Vec<String> = vec![
        format!("starting build \"{id}\""),
        String::new(),
        "FETCHSOURCE".into(),
    ];
    let mut outcome = Outcome::success();
    let mut digest = String::new();
    let mut context = None;
    match source {
        None => {
            lines.push(format!(
                "CommandException: No URLs matched: gs://{bucket}/{object}"
            ));
            outcome = Outcome::failed(
                "FAILURE",
                "FETCH_SOURCE_FAILED",
                format!("failed to fetch source gs://{bucket}/{object}"),
                None,
            );
        }
        Some(o) => {
            lines.push(format!(
                "Fetching storage object: gs://{bucket}/{object}#{}",
                o.generation
            ));
            lines.push(format!(
                "Copying gs://{bucket}/{object}#{}...",
                o.generation
            ));
            lines.push(format!(
                "Operation completed over 1 objects/{} B.",
                o.data.len()
            ));
            // Unpacked outside the lock when the handler could (see
            // `unpack_source`); here otherwise.
            let key = (bucket.to_string(), object.to_string(), o.generation);
            let unpacked = match w.unpacked.get(&key) {
                Some(u) => u.clone(),
                None => std::sync::Arc::new(unpack(&o.data)),
            };
            context = Some(unpacked.clone());
            let files = &unpacked.files;
            digest = format!(
                "sha256:{}",
                hex(&Sha256::digest(
                    [&unpacked.sha256[..], id.as_bytes()].concat()
                ))
            );
            lines.push("BUILD".into());
            let steps = req
                .get("steps")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let project = &w.projects[pk];
            for (i, step) in steps.iter().enumerate() {
                let sid = step
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string());
                let builder = step
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let prefix = format!("Step #{i} - \"{sid}\": ");
                lines.push(format!("Starting Step #{i} - \"{sid}\""));
                let mut body = run_step(step, files, project);
                let injected = match &fault {
                    Some(BuildFault::StepFails { step, lines }) if *step == sid => {
                        Some(lines.clone())
                    }
                    _ => None,
                };
                if let Some(extra) = &injected {
                    body.1 = false;
                    body.0.extend(extra.iter().cloned());
                }
                lines.extend(body.0.iter().map(|l| format!("{prefix}{l}")));
                if !body.1 {
                    let detail = format!("Build step failure: build step {i} \"{builder}\" failed: step exited with non-zero status: 1");
                    lines.push(format!("Finished Step #{i} - \"{sid}\""));
                    lines.push(format!("ERROR: build step {i} \"{builder}\" failed: step exited with non-zero status: 1"));
                    outcome = Outcome::failed("FAILURE", "USER_BUILD_STEP", detail, Some(i));
                    break;
                }
                lines.push(format!("Finished Step #{i} - \"{sid}\""));
                if i == 0 && matches!(fault, Some(BuildFault::NeverFinishes)) {
                    outcome.never_finishes = true;
                    break;
                }
            }
            if outcome.status == "SUCCESS" {
                if let Some(BuildFault::Status {
                    status,
                    failure_type,
                }) = &fault
                {
                    lines.push(format!("ERROR: {status}"));
                    outcome = Outcome::failed(
                        status,
                        failure_type.as_deref().unwrap_or(""),
                        format!("build ended {status}"),
                        None,
                    );
                }
            }
            if outcome.status == "SUCCESS" && !outcome.never_finishes {
                lines.push("PUSH".into());
                for image in req
                    .get("images")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    lines.push(format!("Pushing {image}"));
                    if repo_of(project, image).is_none() {
                        lines.push(format!("name unknown: Repository not found for {image}"));
                        outcome = Outcome::failed(
                            "FAILURE",
                            "PUSH_FAILED",
                            format!("failed to push {image}"),
                            None,
                        );
                        break;
                    }
                    lines.push(format!(
                        "{}: digest: {digest} size: 1570",
                        image.rsplit(':').next().unwrap_or("latest")
                    ));
                }
                if outcome.status == "SUCCESS" {
                    lines.push("DONE".into());
                }
            }
        }
    }

    let start_at = now + cfg.build_queue_delay;
    let timed: Vec<(Instant, String)> = lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| (start_at + cfg.build_line_delay * i as u32, l))
        .collect();
    let finish_at = (!outcome.never_finishes)
        .then(|| timed.last().map(|(t, _)| *t).unwrap_or(start_at) + cfg.build_line_delay);
    let pushes = if outcome.status == "SUCCESS" {
        req.get("images")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|i| (i.to_string(), digest.clone()))
            .collect()
    } else {
        vec![]
    };
    let build = Build {
        context,
        seen_done: None,
        id: id.clone(),
        project: pk.to_string(),
        request: req,
        create_time: now_rfc3339(),
        start_at,
        finish_at,
        lines: timed,
        written_lines: 0,
        final_status: outcome.status,
        status_detail: outcome.detail,
        failure_type: outcome.failure_type,
        failed_step: outcome.failed_step,
        cancelled: false,
        finished: false,
        pushes,
        logs_bucket: log_bucket_name,
        log_object,
    };
    let rendered = render(w, &build, now);
    w.builds.insert(id.clone(), build);
    let op_name = format!("operations/build/{pk}/{}", base64_id(&id));
    ok(json!({
        "name": op_name,
        "metadata": {"@type": "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata", "build": rendered},
    }))
}

struct Outcome {
    status: String,
    failure_type: Option<String>,
    detail: String,
    failed_step: Option<usize>,
    never_finishes: bool,
}

impl Outcome {
    fn success() -> Self {
        Self {
            status: "SUCCESS".into(),
            failure_type: None,
            detail: String::new(),
            failed_step: None,
            never_finishes: false,
        }
    }

    fn failed(status: &str, failure_type: &str, detail: String, step: Option<usize>) -> Self {
        Self {
            status: status.into(),
            failure_type: (!failure_type.is_empty()).then(|| failure_type.to_string()),
            detail,
            failed_step: step,
            never_finishes: false,
        }
    }
}

/// What a step prints and whether it succeeds.
fn run_step(
    step: &Value,
    files: &[(String, Vec<u8>)],
    project: &super::world::ProjectState,
) -> (Vec<String>, bool) {
    let args: Vec<&str> = step
        .get("args")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let script = args.join(" ");
    if let Some(pos) = script.find("docker pull ") {
        let image = script[pos + 12..]
            .split_whitespace()
            .next()
            .unwrap_or_default();
        return match repo_of(project, image).and_then(|r| r.tags.get(image.rsplit('/').next().unwrap_or_default())) {
            Some(d) => (vec![format!("latest: Pulling from {image}"), format!("Digest: {d}"), format!("Status: Downloaded newer image for {image}")], true),
            None => (vec![format!("Error response from daemon: manifest for {image} not found: manifest unknown: Requested entity was not found.")], true),
        };
    }
    if args.first() == Some(&"build") {
        let dockerfile = args
            .windows(2)
            .find(|w| w[0] == "-f")
            .map(|w| w[1])
            .unwrap_or("Dockerfile");
        let Some((_, content)) = files.iter().find(|(n, _)| n == dockerfile) else {
            return (vec![format!("unable to prepare context: unable to evaluate symlinks in Dockerfile path: lstat /workspace/{dockerfile}: no such file or directory")], false);
        };
        let text = String::from_utf8_lossy(content);
        let mut out = vec![format!(
            "Sending build context to Docker daemon  {} files",
            files.len()
        )];
        if let Some(refused) = super::dockerfile::refusal(&text, files) {
            out.push(refused);
            return (out, false);
        }
        let instructions: Vec<String> = super::dockerfile::instructions(&text)
            .into_iter()
            .map(|i| i.text)
            .collect();
        for (i, ins) in instructions.iter().enumerate() {
            out.push(format!("Step {}/{} : {ins}", i + 1, instructions.len()));
            out.push(format!(" ---> {:012x}", (i as u64 + 1) * 0x9e37_79b9));
        }
        out.push("Successfully built 5f1c0a2b3c4d".into());
        for w in args.windows(2).filter(|w| w[0] == "-t") {
            out.push(format!("Successfully tagged {}", w[1]));
        }
        return (out, true);
    }
    (vec![format!("Running: {script}")], true)
}

fn repo_of<'a>(
    p: &'a super::world::ProjectState,
    image: &str,
) -> Option<&'a super::world::Repository> {
    let (host, rest) = image.split_once('/')?;
    let location = host.strip_suffix("-docker.pkg.dev")?;
    let repo = rest.split('/').nth(1)?;
    p.repositories
        .get(&(location.to_string(), repo.to_string()))
        .filter(|r| r.format == "DOCKER")
}

/// Advances every running build to `now`: writes the log lines due, and
/// finishes builds whose time has come.
pub fn advance(w: &mut World, now: Instant) {
    let ids: Vec<String> = w
        .builds
        .values()
        .filter(|b| !b.finished)
        .map(|b| b.id.clone())
        .collect();
    for id in ids {
        let Some(b) = w.builds.get_mut(&id) else {
            continue;
        };
        let due = b.lines.iter().take_while(|(t, _)| *t <= now).count();
        let finish = b.finish_at.is_some_and(|t| t <= now);
        // Only the lines that came due since the last call, appended: the
        // whole log is never rebuilt (it was, for every build, on every
        // API call).
        let new_text: Option<Vec<u8>> = (due > b.written_lines).then(|| {
            b.lines[b.written_lines..due]
                .iter()
                .flat_map(|(_, l)| l.bytes().chain(std::iter::once(b'\n')))
                .collect()
        });
        b.written_lines = due;
        if finish {
            b.finished = true;
        }
        let (bucket, object, project) = (
            b.logs_bucket.clone(),
            b.log_object.clone(),
            b.project.clone(),
        );
        let pushes = if finish && b.final_status == "SUCCESS" {
            b.pushes.clone()
        } else {
            vec![]
        };
        let context = b.context.clone();
        if let (Some(text), Some(bk)) = (new_text, w.buckets.get_mut(&bucket)) {
            append_object(bk, &object, &text, "text/plain; charset=utf-8");
        }
        for (image, digest) in pushes {
            push(w, &project, &image, &digest);
            if let Some(ctx) = &context {
                keep_context(w, &image, &digest, ctx.clone());
            }
        }
    }
}

/// Build contexts kept for the images pushed, at most.
const CONTEXTS_KEPT: usize = 32;

/// Remembers what `image` (a tag) was built from, under its tag and its
/// digest, so a revision of either can be run.
fn keep_context(
    w: &mut World,
    image: &str,
    digest: &str,
    ctx: std::sync::Arc<super::world::Unpacked>,
) {
    let name = match image.rsplit_once(':') {
        Some((n, tag)) if !tag.contains('/') => n,
        _ => image,
    };
    for key in [image.to_string(), format!("{name}@{digest}")] {
        w.contexts.retain(|(k, _)| *k != key);
        w.contexts.push_back((key, ctx.clone()));
    }
    while w.contexts.len() > CONTEXTS_KEPT {
        w.contexts.pop_front();
    }
}

/// Appends to an object (a build log), as a new generation.
fn append_object(bucket: &mut Bucket, name: &str, more: &[u8], content_type: &str) {
    match bucket.objects.get_mut(name) {
        Some(o) => {
            o.data.extend_from_slice(more);
            o.generation = chrono::Utc::now().timestamp_micros().max(o.generation + 1);
            o.updated = now_rfc3339();
        }
        None => {
            put_object(bucket, name, more.to_vec(), content_type);
        }
    }
}

fn push(w: &mut World, pk: &str, image: &str, digest: &str) {
    let Some(p) = w.projects.get_mut(pk) else {
        return;
    };
    let Some((host, rest)) = image.split_once('/') else {
        return;
    };
    let Some(location) = host.strip_suffix("-docker.pkg.dev") else {
        return;
    };
    let parts: Vec<&str> = rest.splitn(3, '/').collect();
    let [_, repo, name_tag] = parts.as_slice() else {
        return;
    };
    if let Some(r) = p
        .repositories
        .get_mut(&(location.to_string(), repo.to_string()))
    {
        let name = name_tag.split(':').next().unwrap_or(name_tag);
        r.tags.insert(name_tag.to_string(), digest.to_string());
        r.digests.insert(format!("{name}@{digest}"));
    }
}

pub fn cancel(w: &mut World, pk: &str, id: &str, now: Instant) -> Response {
    let Some(b) = w.builds.get_mut(id).filter(|b| b.project == pk) else {
        return error(404, "NOT_FOUND", "Requested entity was not found.");
    };
    if b.finished {
        return error(
            400,
            "FAILED_PRECONDITION",
            &format!("build {id} is already finished"),
        );
    }
    b.cancelled = true;
    b.finished = true;
    b.final_status = "CANCELLED".into();
    b.status_detail = "Build was cancelled".into();
    b.pushes.clear();
    let rendered = render(w, &w.builds[id], now);
    ok(rendered)
}

/// The Build resource as `builds.get` shows it at `now`.
pub fn render(w: &World, b: &Build, now: Instant) -> Value {
    let number = w
        .projects
        .get(&b.project)
        .map(|p| p.number.clone())
        .unwrap_or_default();
    let status = if b.finished {
        b.final_status.clone()
    } else if now < b.start_at {
        "QUEUED".into()
    } else {
        "WORKING".into()
    };
    let mut v = b.request.clone();
    v["id"] = json!(b.id);
    v["name"] = json!(format!(
        "projects/{number}/locations/global/builds/{}",
        b.id
    ));
    v["projectId"] = json!(b.project);
    v["status"] = json!(status);
    v["createTime"] = json!(b.create_time);
    v["logUrl"] = json!(format!(
        "https://console.cloud.google.com/cloud-build/builds/{}?project={number}",
        b.id
    ));
    if v.get("timeout").is_none() {
        v["timeout"] = json!("600s");
    }
    v["queueTtl"] = json!("3600s");
    if now >= b.start_at {
        v["startTime"] = json!(wall_time(b.start_at));
    }
    if let (true, Some(finish)) = (b.finished, b.finish_at) {
        v["finishTime"] = json!(wall_time(finish));
        if !b.status_detail.is_empty() {
            v["statusDetail"] = json!(b.status_detail);
        }
        if let Some(t) = &b.failure_type {
            v["failureInfo"] = json!({"type": t, "detail": b.status_detail});
        }
        // Step status is only reported at completion.
        if let Some(steps) = v.get_mut("steps").and_then(Value::as_array_mut) {
            for (i, s) in steps.iter_mut().enumerate() {
                let st = match b.failed_step {
                    Some(f) if i < f => "SUCCESS",
                    Some(f) if i == f => "FAILURE",
                    Some(_) => "QUEUED",
                    None if b.final_status == "SUCCESS" => "SUCCESS",
                    None if b.cancelled => "CANCELLED",
                    None => "SUCCESS",
                };
                s["status"] = json!(st);
            }
        }
        if b.final_status == "SUCCESS" {
            let images: Vec<Value> = b
                .pushes
                .iter()
                .map(|(name, digest)| json!({"name": name, "digest": digest}))
                .collect();
            v["results"] = json!({"images": images});
        }
    }
    v
}

fn split_gs(s: &str) -> (String, String) {
    let rest = s.strip_prefix("gs://").unwrap_or(s);
    match rest.split_once('/') {
        Some((b, p)) => (b.to_string(), p.trim_end_matches('/').to_string()),
        None => (rest.to_string(), String::new()),
    }
}

/// Regular files in a .tar.gz, by path.
/// A source archive's files and digest (slow for a large one: no lock may
/// be held).
pub fn unpack(data: &[u8]) -> Unpacked {
    Unpacked {
        files: untar(data),
        sha256: Sha256::digest(data).into(),
    }
}

/// For a builds.create request: the source object's bytes, copied under
/// the lock, then unpacked without it, and left where `create` finds them.
pub fn unpack_source(shared: &super::Shared, req: &Value) -> Option<(String, String, i64)> {
    let storage = req.pointer("/source/storageSource");
    let (Some(bucket), Some(object)) = (
        storage
            .and_then(|s| s.get("bucket"))
            .and_then(Value::as_str),
        storage
            .and_then(|s| s.get("object"))
            .and_then(Value::as_str),
    ) else {
        return None;
    };
    let found = {
        let w = shared.world();
        w.buckets
            .get(bucket)
            .and_then(|b| b.objects.get(object))
            .map(|o| (o.generation, o.data.clone()))
    };
    let (generation, data) = found?;
    let unpacked = std::sync::Arc::new(unpack(&data));
    let key = (bucket.to_string(), object.to_string(), generation);
    let mut w = shared.world();
    // Bounded: entries live while their create is in flight (the handler
    // removes its own after), so only a flood of creates could pile up.
    if w.unpacked.len() > 64 {
        w.unpacked.clear();
    }
    w.unpacked.insert(key.clone(), unpacked);
    Some(key)
}

fn untar(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let mut archive = tar::Archive::new(GzDecoder::new(data));
    let Ok(entries) = archive.entries() else {
        return out;
    };
    for mut e in entries.flatten() {
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let Ok(path) = e.path().map(|p| p.display().to_string()) else {
            continue;
        };
        let mut buf = Vec::new();
        if e.read_to_end(&mut buf).is_ok() {
            out.push((path.trim_start_matches("./").to_string(), buf));
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn base64_id(id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(id)
}

/// An instant as RFC 3339 wall-clock time.
fn wall_time(t: Instant) -> String {
    let now = Instant::now();
    let wall = if t <= now {
        chrono::Utc::now() - chrono::TimeDelta::from_std(now - t).unwrap_or_default()
    } else {
        chrono::Utc::now() + chrono::TimeDelta::from_std(t - now).unwrap_or_default()
    };
    wall.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
