//! A store in this process's memory (`--database-url memory:`): the same
//! rules as the SQL store (one running deployment per service, fenced
//! writes, gap-free seqs), and nothing survives the process. It is the
//! no-store baseline of the store benchmark and a store for throwaway
//! rehearsals.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;

use super::store::{
    last_stage_started, to_ms, Created, Cursor, Filter, NewDeployment, Record, State, Store,
    StoreError,
};
use crate::pipeline::event::{Event, EventKind};
use crate::pipeline::Deployment;

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    records: HashMap<String, Record>,
    events: HashMap<String, Vec<Event>>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// The running deployment `owner` holds, for a write.
    fn owned(&mut self, owner: &str, id: &str) -> Result<&mut Record, StoreError> {
        match self.records.get_mut(id) {
            Some(r) if r.state == State::Running && r.owner.as_deref() == Some(owner) => Ok(r),
            _ => Err(StoreError::LeaseLost { id: id.to_string() }),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create(&self, new: &NewDeployment) -> Result<Created, StoreError> {
        let mut s = self.lock();
        if let Some(key) = &new.request_id {
            if let Some(r) = s
                .records
                .values()
                .find(|r| r.request_id.as_ref() == Some(key))
            {
                return Ok(Created::Existing(Box::new(r.clone())));
            }
        }
        let t = &new.progress.request.target;
        if let Some(r) = s
            .records
            .values()
            .find(|r| r.state == State::Running && r.target == *t)
        {
            return Err(StoreError::Busy {
                holder: r.id.clone(),
            });
        }
        let now = SystemTime::now();
        let d = &new.progress;
        s.records.insert(
            d.id.clone(),
            Record {
                id: d.id.clone(),
                request_id: new.request_id.clone(),
                request_digest: new.request_digest.clone(),
                target: t.clone(),
                state: State::Running,
                stage: Some(d.stage()),
                caller: new.caller.clone(),
                created: now,
                updated: now,
                ended: None,
                owner: Some(new.owner.clone()),
                lease_until: new.lease_until,
                cancel_requested: false,
                resumed: 0,
                last_seq: 0,
                progress: Some(d.clone()),
                outcome: None,
            },
        );
        Ok(Created::New)
    }

    fn prefers_batches(&self) -> bool {
        false
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        Ok(self.lock().records.get(id).cloned())
    }

    async fn list(
        &self,
        filter: &Filter,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<(Vec<Record>, Option<Cursor>), StoreError> {
        let s = self.lock();
        let mut all: Vec<&Record> = s
            .records
            .values()
            .filter(|r| {
                filter
                    .project
                    .as_ref()
                    .is_none_or(|p| *p == r.target.project)
            })
            .filter(|r| filter.region.as_ref().is_none_or(|p| *p == r.target.region))
            .filter(|r| {
                filter
                    .service
                    .as_ref()
                    .is_none_or(|p| *p == r.target.service)
            })
            .filter(|r| filter.state.is_none_or(|st| st == r.state))
            .filter(|r| {
                after.is_none_or(|c| {
                    (to_ms(r.created), r.id.as_str()) < (c.created_ms, c.id.as_str())
                })
            })
            .collect();
        all.sort_by(|a, b| (to_ms(b.created), &b.id).cmp(&(to_ms(a.created), &a.id)));
        let more = all.len() > limit as usize;
        let page: Vec<Record> = all.into_iter().take(limit as usize).cloned().collect();
        let next = more.then(|| page.last()).flatten().map(|r| Cursor {
            created_ms: to_ms(r.created),
            id: r.id.clone(),
        });
        Ok((page, next))
    }

    async fn events(&self, id: &str, after_seq: u64, limit: u32) -> Result<Vec<Event>, StoreError> {
        Ok(self
            .lock()
            .events
            .get(id)
            .map(|v| {
                v.iter()
                    .filter(|e| e.seq > after_seq)
                    .take(limit as usize)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn write(
        &self,
        owner: &str,
        events: &[Event],
        progress: Option<&Deployment>,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        // All or nothing: checked on a copy, then swapped in.
        let Some(id) = events
            .first()
            .map(|e| e.deployment_id.clone())
            .or_else(|| progress.map(|d| d.id.clone()))
        else {
            return Ok(());
        };
        let mut record = s.owned(owner, &id)?.clone();
        let mut kept = vec![];
        for e in events {
            if e.seq != record.last_seq + 1 {
                return Err(StoreError::LeaseLost { id });
            }
            record.last_seq = e.seq;
            kept.push(e.clone());
        }
        let now = SystemTime::now();
        if let Some(stage) = last_stage_started(events) {
            record.stage = Some(stage);
            record.updated = now;
        }
        if let Some(d) = progress {
            record.progress = Some(d.clone());
            record.stage = Some(d.stage());
            record.updated = now;
        }
        if let Some(EventKind::Outcome(o)) = events.last().map(|e| &e.kind) {
            record.state = State::of(o);
            record.outcome = Some(o.as_ref().clone());
            record.ended = Some(now);
            record.updated = now;
            record.owner = None;
            record.lease_until = SystemTime::UNIX_EPOCH;
        }
        s.events.entry(id.clone()).or_default().extend(kept);
        s.records.insert(id, record);
        Ok(())
    }

    async fn renew(
        &self,
        owner: &str,
        ids: &[String],
        until: SystemTime,
    ) -> Result<Vec<(String, bool)>, StoreError> {
        let mut s = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| {
                let r = s.owned(owner, id).ok()?;
                r.lease_until = until;
                Some((id.clone(), r.cancel_requested))
            })
            .collect())
    }

    async fn claim(
        &self,
        owner: &str,
        own: bool,
        until: SystemTime,
        limit: u32,
    ) -> Result<Vec<(Record, Option<String>)>, StoreError> {
        let now = SystemTime::now();
        let mut s = self.lock();
        let mut claimed = vec![];
        for r in s.records.values_mut() {
            if claimed.len() >= limit as usize {
                break;
            }
            let takeable = r.state == State::Running
                && if own {
                    r.lease_until < now || r.owner.as_deref() == Some(owner)
                } else {
                    // Never its own: it may still be running them.
                    r.lease_until < now && r.owner.as_deref() != Some(owner)
                };
            if takeable {
                let previous = r.owner.replace(owner.to_string());
                r.lease_until = until;
                r.resumed += 1;
                claimed.push((r.clone(), previous));
            }
        }
        Ok(claimed)
    }

    async fn release(&self, owner: &str, ids: &[String]) -> Result<(), StoreError> {
        let mut s = self.lock();
        for id in ids {
            if let Some(r) = s.records.get_mut(id) {
                if r.owner.as_deref() == Some(owner) {
                    r.lease_until = SystemTime::UNIX_EPOCH;
                }
            }
        }
        Ok(())
    }

    async fn request_cancel(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let mut s = self.lock();
        Ok(s.records.get_mut(id).map(|r| {
            if r.state == State::Running {
                r.cancel_requested = true;
                r.updated = SystemTime::now();
            }
            r.clone()
        }))
    }

    async fn prune(&self, before: SystemTime) -> Result<u64, StoreError> {
        let mut s = self.lock();
        let old: Vec<String> = s
            .records
            .values()
            .filter(|r| r.state != State::Running && r.ended.is_some_and(|e| e < before))
            .map(|r| r.id.clone())
            .collect();
        for id in &old {
            s.records.remove(id);
            s.events.remove(id);
        }
        Ok(old.len() as u64)
    }
}
