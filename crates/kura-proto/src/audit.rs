//! Recording audit entries: a batching sink in front of the metadata
//! cluster. Calls hand their record over and (for the public API) wait
//! until its batch is committed through Raft; one `AppendAudit` carries
//! every record that arrived while the previous batch was in flight, so
//! auditing costs a Raft commit per batch, not per call.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::meta::{AUDIT_BATCH_MAX, AuditRecord, Command};
use crate::meta_client::{MetaClient, Retry};

/// Records queued beyond this are dropped (and counted): a metadata
/// cluster that cannot keep up must not exhaust a process's memory.
const QUEUE_MAX: usize = 65_536;
/// How long a caller waits for its record's commit.
pub const COMMIT_WAIT: Duration = Duration::from_secs(10);

type Item = (AuditRecord, Option<oneshot::Sender<bool>>);

/// A cheap handle to a process's audit batcher.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Item>,
    recorder: String,
}

impl AuditSink {
    /// Starts the batcher: records go to the cluster behind `meta`;
    /// `recorder` names this process in every record (`gateway 1`).
    pub fn start(meta: MetaClient, recorder: impl Into<String>) -> AuditSink {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        tokio::spawn(run(meta, rx));
        AuditSink {
            tx,
            recorder: recorder.into(),
        }
    }

    fn stamp(&self, mut record: AuditRecord) -> AuditRecord {
        if record.recorder.is_empty() {
            record.recorder = self.recorder.clone();
        }
        if record.time_unix_ms == 0 {
            record.time_unix_ms = now_ms();
        }
        record
    }

    /// Queues `record` and waits until it is committed (or
    /// [`COMMIT_WAIT`] passed); answers whether it was.
    pub async fn record(&self, record: AuditRecord) -> bool {
        self.record_within(record, COMMIT_WAIT).await
    }

    /// Queues `record` and waits at most `wait` for its commit; answers
    /// whether it was committed by then. A record not committed in time
    /// stays queued and is committed when the cluster can take it.
    pub async fn record_within(&self, record: AuditRecord, wait: Duration) -> bool {
        self.queue(record, wait).await
    }

    /// Queues `record` now and answers a future that waits at most `wait`
    /// for its commit (true if committed by then): a call can do its work
    /// while its entry commits, and wait only before it answers.
    pub fn queue(
        &self,
        record: AuditRecord,
        wait: Duration,
    ) -> impl std::future::Future<Output = bool> + Send + use<> {
        let (done, committed) = oneshot::channel();
        let queued = self.tx.try_send((self.stamp(record), Some(done))).is_ok();
        if !queued {
            metrics::counter!("kura_audit_dropped_total").increment(1);
            tracing::error!("audit queue full or closed: an audit record was dropped");
        }
        async move { queued && matches!(tokio::time::timeout(wait, committed).await, Ok(Ok(true))) }
    }

    /// Queues `record` without waiting (refusals seen where no task can
    /// wait, e.g. in an interceptor).
    pub fn record_later(&self, record: AuditRecord) {
        if self.tx.try_send((self.stamp(record), None)).is_err() {
            metrics::counter!("kura_audit_dropped_total").increment(1);
            tracing::error!("audit queue full or closed: an audit record was dropped");
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn run(meta: MetaClient, mut rx: mpsc::Receiver<Item>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < AUDIT_BATCH_MAX {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (records, waiters): (Vec<AuditRecord>, Vec<Option<oneshot::Sender<bool>>>) =
            batch.into_iter().unzip();
        let n = records.len();
        metrics::histogram!("kura_audit_batch_records").record(n as f64);
        // Idempotent retries may record a batch twice after an unknown
        // outcome: a duplicate entry is better than a lost one.
        let ok = loop {
            match meta
                .propose(&Command::AppendAudit(records.clone()), Retry::Idempotent)
                .await
            {
                Ok(Ok(_)) => break true,
                Ok(Err(r)) => {
                    tracing::error!(refusal = %r, records = n, "the metadata cluster refused audit records");
                    break false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, records = n, "audit records not committed yet; retrying");
                    if rx.is_closed() {
                        break false;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        if ok {
            metrics::counter!("kura_audit_records_total").increment(n as u64);
        } else {
            metrics::counter!("kura_audit_failures_total").increment(n as u64);
        }
        for w in waiters.into_iter().flatten() {
            let _ = w.send(ok);
        }
    }
}

/// A guard's refusal sink that records into `sink` (internal services:
/// a storage node's certificate calling Raft, and the like).
pub fn refusal_sink(sink: AuditSink) -> kura_auth::authz::RefusalSink {
    std::sync::Arc::new(move |r: kura_auth::authz::Refusal| {
        sink.record_later(AuditRecord {
            who: r.who,
            action: r.action,
            peer: r.peer,
            outcome: crate::code_name(r.code).to_string(),
            ..AuditRecord::default()
        });
    })
}
