//! The deployment store over SQL: SQLite (a file, the default) or
//! PostgreSQL (several daemons sharing the work), through sqlx's `Any`
//! driver so both run the same portable statements. Migrations are
//! embedded and applied when the store opens.
//!
//! Leases are rows: each running deployment names its owner and a lease
//! expiry, and every write a run makes is conditional on still being the
//! owner, so a daemon that lost a deployment cannot write its history.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use crate::deployments::store::{
    from_ms, last_stage_started, to_ms, Created, Cursor, Filter, NewDeployment, Record, State,
    Store, StoreError,
};
use crate::pipeline::event::{Event, EventKind, Outcome, Stage};
use crate::pipeline::Deployment;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations");

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("--database-url {0:?}: use sqlite:///ABSOLUTE/PATH or postgres://USER@HOST/DB (or memory: for no durable store)")]
    BadUrl(String),
    #[error("creating the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the deployment store {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the deployment store {url}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// This process's memory: nothing survives it.
    Memory,
}

/// The URL of the in-memory store.
pub const MEMORY_URL: &str = "memory:";

/// Opens the store a URL names.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, OpenError> {
    Ok(match backend_of(url)? {
        Backend::Memory => std::sync::Arc::new(crate::deployments::memory::MemoryStore::default()),
        _ => std::sync::Arc::new(SqlStore::open(url).await?),
    })
}

/// Checks a `--database-url`: `sqlite:///ABSOLUTE/PATH` or `postgres://…`.
pub fn backend_of(url: &str) -> Result<Backend, OpenError> {
    if url == MEMORY_URL {
        return Ok(Backend::Memory);
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or_default();
        if path.starts_with('/') && path.len() > 1 {
            return Ok(Backend::Sqlite);
        }
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Backend::Postgres);
    }
    Err(OpenError::BadUrl(url.to_string()))
}

/// The SQLite URL of the store file in a state directory.
pub fn sqlite_url_in(state_dir: &Path) -> String {
    format!("sqlite://{}", state_dir.join("deployd.db").display())
}

/// Where the store lives when neither --database-url nor --state-dir says:
/// `$XDG_STATE_HOME/deployd`, else `~/.local/state/deployd`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("deployd");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/state/deployd"),
        None => std::env::temp_dir().join("deployd-state"),
    }
}

pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
}

/// A password in a URL stays out of logs and errors.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

impl SqlStore {
    /// Opens (creating when missing) and migrates the store.
    pub async fn open(url: &str) -> Result<SqlStore, OpenError> {
        sqlx::any::install_default_drivers();
        let backend = backend_of(url)?;
        let shown = redacted(url);
        let (connect_url, max) = match backend {
            Backend::Sqlite => {
                let path = url.trim_start_matches("sqlite://");
                let path = Path::new(path.split('?').next().unwrap_or_default());
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| OpenError::StateDir {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                let sep = if url.contains('?') { '&' } else { '?' };
                (format!("{url}{sep}mode=rwc"), 8)
            }
            Backend::Postgres => (url.to_string(), 16),
            Backend::Memory => return Err(OpenError::BadUrl(url.to_string())),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never wait for the writer; NORMAL
                        // sync survives a killed process (not power loss
                        // of the last commits, as SQLite documents).
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect_url)
            .await
            .map_err(|source| OpenError::Connect {
                url: shown.clone(),
                source,
            })?;
        MIGRATIONS
            .run(&pool)
            .await
            .map_err(|source| OpenError::Migrate { url: shown, source })?;
        Ok(SqlStore { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Bytes one deployment takes: its row's data and its events' bodies.
    pub async fn footprint(&self, id: &str) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(LENGTH(progress) + COALESCE(LENGTH(outcome), 0) + LENGTH(request_digest) AS BIGINT) AS n FROM deployments WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        let events = sqlx::query(
            "SELECT CAST(COALESCE(SUM(LENGTH(body)), 0) AS BIGINT) AS n FROM events WHERE deployment_id = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        let n = |r: &AnyRow| r.try_get::<i64, _>("n").unwrap_or(0) as u64;
        Ok(row.as_ref().map(n).unwrap_or(0) + n(&events))
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

const COLUMNS: &str = "id, request_id, request_digest, project, region, service, state, stage, caller, \
    created_ms, updated_ms, ended_ms, owner, lease_until_ms, cancel_requested, resumed, progress, outcome, \
    (SELECT COALESCE(MAX(seq), 0) FROM events e WHERE e.deployment_id = deployments.id) AS last_seq";

fn record(row: &AnyRow) -> Result<Record, StoreError> {
    let text = |c: &str| row.try_get::<String, _>(c).map_err(|e| corrupt(c, e));
    let opt_text = |c: &str| {
        row.try_get::<Option<String>, _>(c)
            .map_err(|e| corrupt(c, e))
    };
    let int = |c: &str| row.try_get::<i64, _>(c).map_err(|e| corrupt(c, e));
    let state = text("state")?;
    let id = text("id")?;
    let progress: Option<Deployment> = match serde_json::from_str(&text("progress")?) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(deployment_id = %id, error = %e, "the stored progress cannot be read");
            None
        }
    };
    let outcome = match opt_text("outcome")? {
        Some(o) => Some(serde_json::from_str::<Outcome>(&o).map_err(|e| corrupt("outcome", e))?),
        None => None,
    };
    Ok(Record {
        id,
        request_id: opt_text("request_id")?,
        request_digest: text("request_digest")?,
        target: crate::pipeline::model::Target {
            project: text("project")?,
            region: text("region")?,
            service: text("service")?,
        },
        state: State::parse(&state).ok_or_else(|| corrupt("state", &state))?,
        stage: opt_text("stage")?.and_then(|s| Stage::parse(&s)),
        caller: text("caller")?,
        created: from_ms(int("created_ms")?),
        updated: from_ms(int("updated_ms")?),
        ended: row
            .try_get::<Option<i64>, _>("ended_ms")
            .map_err(|e| corrupt("ended_ms", e))?
            .map(from_ms),
        owner: opt_text("owner")?,
        lease_until: from_ms(int("lease_until_ms")?),
        cancel_requested: int("cancel_requested")? != 0,
        resumed: int("resumed")?.max(0) as u32,
        last_seq: int("last_seq")?.max(0) as u64,
        progress,
        outcome,
    })
}

fn json<T: serde::Serialize>(what: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt(what, e))
}

impl SqlStore {
    /// The deployment whose unique `column` (id or request_id) is `value`.
    async fn one_by(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<Record>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM deployments WHERE {column} = $1");
        let row = sqlx::query(&sql)
            .bind(value)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(record).transpose()
    }

    async fn by_request_id(&self, request_id: &str) -> Result<Option<Record>, StoreError> {
        self.one_by("request_id", request_id).await
    }

    async fn running_holder(&self, d: &Deployment) -> Result<Option<String>, StoreError> {
        let t = &d.request.target;
        let row = sqlx::query(
            "SELECT id FROM deployments WHERE project = $1 AND region = $2 AND service = $3 AND state = 'RUNNING'",
        )
        .bind(&t.project)
        .bind(&t.region)
        .bind(&t.service)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| r.try_get::<String, _>("id").map_err(|e| corrupt("id", e)))
            .transpose()
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn create(&self, new: &NewDeployment) -> Result<Created, StoreError> {
        if let Some(key) = &new.request_id {
            if let Some(r) = self.by_request_id(key).await? {
                return Ok(Created::Existing(Box::new(r)));
            }
        }
        let d = &new.progress;
        let t = &d.request.target;
        let now = to_ms(SystemTime::now());
        let inserted = sqlx::query(
            "INSERT INTO deployments (id, request_id, request_digest, project, region, service, state, stage, caller, \
             created_ms, updated_ms, owner, lease_until_ms, progress) \
             VALUES ($1, $2, $3, $4, $5, $6, 'RUNNING', $7, $8, $9, $9, $10, $11, $12)",
        )
        .bind(&d.id)
        .bind(new.request_id.clone())
        .bind(&new.request_digest)
        .bind(&t.project)
        .bind(&t.region)
        .bind(&t.service)
        .bind(d.stage().as_str())
        .bind(&new.caller)
        .bind(now)
        .bind(&new.owner)
        .bind(to_ms(new.lease_until))
        .bind(json("progress", d)?)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(Created::New),
            Err(e) if is_unique_violation(&e) => {
                // Which rule: the same request_id (sent twice at once), or
                // the service already has a deployment running.
                if let Some(key) = &new.request_id {
                    if let Some(r) = self.by_request_id(key).await? {
                        return Ok(Created::Existing(Box::new(r)));
                    }
                }
                match self.running_holder(d).await? {
                    Some(holder) => Err(StoreError::Busy { holder }),
                    None => Err(backend(e)),
                }
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        self.one_by("id", id).await
    }

    async fn list(
        &self,
        filter: &Filter,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<(Vec<Record>, Option<Cursor>), StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM deployments WHERE 1 = 1");
        let mut texts: Vec<String> = vec![];
        let mut n = 0;
        let mut param = |sql: &mut String, col: &str, v: &str| {
            n += 1;
            sql.push_str(&format!(" AND {col} = ${n}"));
            texts.push(v.to_string());
        };
        if let Some(v) = &filter.project {
            param(&mut sql, "project", v);
        }
        if let Some(v) = &filter.region {
            param(&mut sql, "region", v);
        }
        if let Some(v) = &filter.service {
            param(&mut sql, "service", v);
        }
        if let Some(v) = filter.state {
            param(&mut sql, "state", v.as_str());
        }
        if after.is_some() {
            sql.push_str(&format!(
                " AND (created_ms < ${a} OR (created_ms = ${a} AND id < ${b}))",
                a = n + 1,
                b = n + 2
            ));
        }
        sql.push_str(&format!(
            " ORDER BY created_ms DESC, id DESC LIMIT {}",
            limit as i64 + 1
        ));
        let mut q = sqlx::query(&sql);
        for t in texts {
            q = q.bind(t);
        }
        if let Some(c) = after {
            q = q.bind(c.created_ms).bind(c.id.clone());
        }
        let rows = q.fetch_all(&self.pool).await.map_err(backend)?;
        let mut records = rows.iter().map(record).collect::<Result<Vec<_>, _>>()?;
        let next = if records.len() > limit as usize {
            records.truncate(limit as usize);
            records.last().map(|r| Cursor {
                created_ms: to_ms(r.created),
                id: r.id.clone(),
            })
        } else {
            None
        };
        Ok((records, next))
    }

    async fn events(&self, id: &str, after_seq: u64, limit: u32) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT body FROM events WHERE deployment_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after_seq.min(i64::MAX as u64) as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let body: String = r.try_get("body").map_err(|e| corrupt("event", e))?;
                serde_json::from_str(&body).map_err(|e| corrupt("event", e))
            })
            .collect()
    }

    async fn write(
        &self,
        owner: &str,
        events: &[Event],
        progress: Option<&Deployment>,
    ) -> Result<(), StoreError> {
        let Some(id) = events
            .first()
            .map(|e| e.deployment_id.clone())
            .or_else(|| progress.map(|d| d.id.clone()))
        else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for e in events {
            append_in(&mut *tx, owner, e).await?;
        }
        let now = to_ms(SystemTime::now());
        // The stage a listing shows follows the events, between checkpoints.
        let started = last_stage_started(events);
        if let (Some(stage), None) = (started, progress) {
            sqlx::query(
                "UPDATE deployments SET stage = $1, updated_ms = $2 WHERE id = $3 AND owner = $4",
            )
            .bind(stage.as_str())
            .bind(now)
            .bind(&id)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        if let Some(d) = progress {
            let done = sqlx::query(
                "UPDATE deployments SET progress = $1, stage = $2, updated_ms = $3 \
                 WHERE id = $4 AND owner = $5 AND state = 'RUNNING'",
            )
            .bind(json("progress", d)?)
            .bind(d.stage().as_str())
            .bind(now)
            .bind(&d.id)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::LeaseLost { id });
            }
        }
        if let Some(EventKind::Outcome(outcome)) = events.last().map(|e| &e.kind) {
            let done = sqlx::query(
                "UPDATE deployments SET state = $1, outcome = $2, ended_ms = $3, updated_ms = $3, owner = NULL, lease_until_ms = 0 \
                 WHERE id = $4 AND owner = $5 AND state = 'RUNNING'",
            )
            .bind(State::of(outcome).as_str())
            .bind(json("outcome", outcome.as_ref())?)
            .bind(now)
            .bind(&id)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::LeaseLost { id });
            }
        }
        tx.commit().await.map_err(backend)
    }

    async fn renew(
        &self,
        owner: &str,
        ids: &[String],
        until: SystemTime,
    ) -> Result<Vec<(String, bool)>, StoreError> {
        let mut held = Vec::with_capacity(ids.len());
        for id in ids {
            let row = sqlx::query(
                "UPDATE deployments SET lease_until_ms = $1 WHERE id = $2 AND owner = $3 AND state = 'RUNNING' \
                 RETURNING cancel_requested",
            )
            .bind(to_ms(until))
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
            if let Some(r) = row {
                let cancel: i64 = r
                    .try_get("cancel_requested")
                    .map_err(|e| corrupt("cancel_requested", e))?;
                held.push((id.clone(), cancel != 0));
            }
        }
        Ok(held)
    }

    async fn claim(
        &self,
        owner: &str,
        own: bool,
        until: SystemTime,
        limit: u32,
    ) -> Result<Vec<(Record, Option<String>)>, StoreError> {
        let now = to_ms(SystemTime::now());
        // A takeover never claims this daemon's own deployments: it may be
        // running them with a lease a late heartbeat let lapse (claiming
        // one counted it resumed while it ran on). They are resumed at start.
        let takeable = if own {
            "(lease_until_ms < $1 OR owner = $2)"
        } else {
            "(lease_until_ms < $1 AND (owner IS NULL OR owner <> $2))"
        };
        let rows = sqlx::query(&format!(
            "SELECT id, owner FROM deployments WHERE state = 'RUNNING' AND {takeable} ORDER BY created_ms LIMIT {limit}"
        ))
        .bind(now)
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut claimed = vec![];
        for r in rows {
            let id: String = r.try_get("id").map_err(|e| corrupt("id", e))?;
            let previous: Option<String> = r.try_get("owner").map_err(|e| corrupt("owner", e))?;
            // The condition again: another daemon may have claimed it since.
            let done = sqlx::query(&format!(
                "UPDATE deployments SET owner = $2, lease_until_ms = $3, resumed = resumed + 1 \
                 WHERE id = $4 AND state = 'RUNNING' AND {takeable}"
            ))
            .bind(now)
            .bind(owner)
            .bind(to_ms(until))
            .bind(&id)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
            if done.rows_affected() == 1 {
                if let Some(rec) = self.get(&id).await? {
                    claimed.push((rec, previous));
                }
            }
        }
        Ok(claimed)
    }

    async fn release(&self, owner: &str, ids: &[String]) -> Result<(), StoreError> {
        for id in ids {
            sqlx::query("UPDATE deployments SET lease_until_ms = 0 WHERE id = $1 AND owner = $2")
                .bind(id)
                .bind(owner)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn request_cancel(&self, id: &str) -> Result<Option<Record>, StoreError> {
        sqlx::query(
            "UPDATE deployments SET cancel_requested = 1, updated_ms = $1 WHERE id = $2 AND state = 'RUNNING'",
        )
        .bind(to_ms(SystemTime::now()))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        self.get(id).await
    }

    async fn prune(&self, before: SystemTime) -> Result<u64, StoreError> {
        let before = to_ms(before);
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query(
            "DELETE FROM events WHERE deployment_id IN \
             (SELECT id FROM deployments WHERE state <> 'RUNNING' AND ended_ms < $1)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let done =
            sqlx::query("DELETE FROM deployments WHERE state <> 'RUNNING' AND ended_ms < $1")
                .bind(before)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(done.rows_affected())
    }
}

/// Keeps one event, only while `owner` holds the deployment; a seq kept
/// before (by anyone) is refused by the key.
async fn append_in<'e, E>(db: E, owner: &str, event: &Event) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let done = sqlx::query(
        "INSERT INTO events (deployment_id, seq, body) \
         SELECT $1, $2, $3 WHERE EXISTS \
         (SELECT 1 FROM deployments WHERE id = $4 AND owner = $5 AND state = 'RUNNING')",
    )
    .bind(&event.deployment_id)
    .bind(event.seq.min(i64::MAX as u64) as i64)
    .bind(json("event", event)?)
    .bind(&event.deployment_id)
    .bind(owner)
    .execute(db)
    .await;
    match done {
        Ok(r) if r.rows_affected() == 1 => Ok(()),
        Ok(_) => Err(StoreError::LeaseLost {
            id: event.deployment_id.clone(),
        }),
        Err(e) if is_unique_violation(&e) => Err(StoreError::LeaseLost {
            id: event.deployment_id.clone(),
        }),
        Err(e) => Err(backend(e)),
    }
}
