//! Blocking-query bookkeeping, per Consul's contract: wait on `X-Consul-Index`, reset when it goes
//! backwards, back off on errors.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use super::client::{ConsulError, QueryMeta, QueryOptions};
use crate::util::backoff::Backoff;

/// The index to send on the next blocking read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockingIndex(u64);

impl BlockingIndex {
    pub fn get(&self) -> u64 {
        self.0
    }

    /// Records the `X-Consul-Index` of an answer. Returns whether the data may have changed.
    /// An index that went backwards resets to 0 (Consul's rule); 0 itself is never sent as 0
    /// after the first read, because index 0 would not block.
    pub fn update(&mut self, header: u64) -> bool {
        let prev = self.0;
        self.0 = if header < prev { 0 } else { header.max(1) };
        header != prev
    }
}

/// Runs a blocking query in a loop and publishes each new answer on `tx`, until `shutdown`.
///
/// `fetch` is given the options of each request (index and wait). The first read does not block,
/// nor does the first read after an error.
/// An answer is published only when it differs from the last one published. `X-Consul-Index`
/// alone cannot tell: for a missing key or an empty prefix Consul answers with the whole KV
/// table's index, which every unrelated write moves. Publishing on the index alone made an idle
/// agent's watches feed its own report writes forever (issue 10). Errors back off
/// exponentially; permission errors are logged as errors, since they need an operator.
pub async fn watch_loop<T, F, Fut>(
    what: &str,
    wait: Duration,
    mut fetch: F,
    tx: watch::Sender<Option<T>>,
    stop: CancellationToken,
) where
    T: PartialEq,
    F: FnMut(QueryOptions) -> Fut,
    Fut: Future<Output = Result<(T, QueryMeta), ConsulError>>,
{
    let mut index = BlockingIndex::default();
    let mut backoff = Backoff::default();
    loop {
        let q = QueryOptions::blocking(index.get(), wait);
        let r = tokio::select! {
            r = fetch(q) => r,
            _ = stop.cancelled() => return,
            // Nobody reads it any more.
            _ = tx.closed() => return,
        };
        match r {
            Ok((v, meta)) => {
                backoff.reset();
                index.update(meta.index);
                if tx.borrow().as_ref() != Some(&v) {
                    debug!(watch = what, index = meta.index, "changed");
                    if tx.send(Some(v)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                // After an error, start over with a plain read: the agent may have restarted with
                // a lower index, and a blocking read at the old index would hang until `wait`.
                index = BlockingIndex::default();
                match &e {
                    ConsulError::PermissionDenied { .. } => {
                        error!(watch = what, error = %e, "watch refused")
                    }
                    _ => warn!(watch = what, error = %e, "watch failed; retrying"),
                }
                let pause = backoff.fail();
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// Starts `watch_loop` on `tracker` and returns what it publishes: None until the first answer.
/// The one way the product follows something in Consul.
pub fn spawn_watch<T, F, Fut>(
    tracker: &TaskTracker,
    what: impl Into<String>,
    wait: Duration,
    fetch: F,
    stop: &CancellationToken,
) -> watch::Receiver<Option<T>>
where
    T: PartialEq + Send + Sync + 'static,
    F: FnMut(QueryOptions) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(T, QueryMeta), ConsulError>> + Send,
{
    let (tx, rx) = watch::channel(None);
    let what = what.into();
    let stop = stop.clone();
    tracker.spawn(async move { watch_loop(&what, wait, fetch, tx, stop).await });
    rx
}

/// Follows a KV prefix, values included: `spawn_watch` of `kv_list`.
pub fn watch_prefix(
    tracker: &TaskTracker,
    client: &super::Client,
    what: impl Into<String>,
    prefix: String,
    wait: Duration,
    stop: &CancellationToken,
) -> watch::Receiver<Option<Vec<super::KvPair>>> {
    let c = client.clone();
    spawn_watch(
        tracker,
        what,
        wait,
        move |q| {
            let c = c.clone();
            let p = prefix.clone();
            async move { c.kv_list(&p, &q).await }
        },
        stop,
    )
}

/// Follows one KV key (None while it does not exist): `spawn_watch` of `kv_get`.
pub fn watch_key(
    tracker: &TaskTracker,
    client: &super::Client,
    what: impl Into<String>,
    key: String,
    wait: Duration,
    stop: &CancellationToken,
) -> watch::Receiver<Option<Option<super::KvPair>>> {
    let c = client.clone();
    spawn_watch(
        tracker,
        what,
        wait,
        move |q| {
            let c = c.clone();
            let k = key.clone();
            async move { c.kv_get(&k, &q).await }
        },
        stop,
    )
}

/// Between two blocking reads of a missing key or an empty prefix, when paced.
#[derive(Debug, Clone, Copy)]
pub struct Pace(pub Duration);

impl Pace {
    /// The pause before the next blocking read: the pace while `waiting`, else none.
    fn pause_if(self, waiting: bool) -> Duration {
        if waiting {
            self.0
        } else {
            Duration::ZERO
        }
    }
}

/// Like `watch_key` and `watch_prefix`, but while the key is missing (the prefix empty) each
/// blocking read waits `pace` first. Consul answers such a read with the whole KV table's index,
/// so unpaced it returns at every write anywhere in the cluster: one request per node per write.
/// For watches that may wait a moment to see a key appear (an apps node's own topology).
pub fn watch_key_paced(
    tracker: &TaskTracker,
    client: &super::Client,
    what: impl Into<String>,
    key: String,
    wait: Duration,
    pace: Pace,
    stop: &CancellationToken,
) -> watch::Receiver<Option<Option<super::KvPair>>> {
    let c = client.clone();
    let pause = move |v: &Option<super::KvPair>| pace.pause_if(v.is_none());
    spawn_paced(tracker, what, wait, stop, pause, move |q| {
        let (c, k) = (c.clone(), key.clone());
        async move { c.kv_get(&k, &q).await }
    })
}

/// `watch_prefix`, paced while the prefix is empty (see `watch_key_paced`).
pub fn watch_prefix_paced(
    tracker: &TaskTracker,
    client: &super::Client,
    what: impl Into<String>,
    prefix: String,
    wait: Duration,
    pace: Pace,
    stop: &CancellationToken,
) -> watch::Receiver<Option<Vec<super::KvPair>>> {
    let c = client.clone();
    let pause = move |v: &Vec<super::KvPair>| pace.pause_if(v.is_empty());
    spawn_paced(tracker, what, wait, stop, pause, move |q| {
        let (c, p) = (c.clone(), prefix.clone());
        async move { c.kv_list(&p, &q).await }
    })
}

/// `spawn_watch` whose blocking reads first wait `pause(last answer)`: while a key is missing
/// (`watch_key_paced`), or for as long as the answer says (the job worker's live set, whose
/// pause grows with its size). The first read, and the first after an error, go at once.
pub fn spawn_paced<T, F, Fut>(
    tracker: &TaskTracker,
    what: impl Into<String>,
    wait: Duration,
    stop: &CancellationToken,
    pause: impl Fn(&T) -> Duration + Send + Sync + 'static,
    mut fetch: F,
) -> watch::Receiver<Option<T>>
where
    T: PartialEq + Send + Sync + 'static,
    F: FnMut(QueryOptions) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(T, QueryMeta), ConsulError>> + Send + 'static,
{
    use std::sync::{Arc, Mutex};
    let next = Arc::new(Mutex::new(Duration::ZERO));
    let pause = Arc::new(pause);
    spawn_watch(
        tracker,
        what,
        wait,
        move |q| {
            let (next, pause) = (next.clone(), pause.clone());
            let delay = if q.index > 0 {
                *next.lock().unwrap_or_else(|p| p.into_inner())
            } else {
                Duration::ZERO
            };
            let read = fetch(q);
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let r = read.await;
                if let Ok((v, _)) = &r {
                    *next.lock().unwrap_or_else(|p| p.into_inner()) = pause(v);
                }
                r
            }
        },
        stop,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_going_backwards_resets_to_zero() {
        let mut i = BlockingIndex::default();
        assert!(i.update(10));
        assert_eq!(i.get(), 10);
        assert!(!i.update(10));
        assert!(i.update(5));
        assert_eq!(i.get(), 0);
    }

    #[test]
    fn zero_header_never_gives_a_non_blocking_index() {
        let mut i = BlockingIndex::default();
        i.update(0);
        assert_eq!(i.get(), 1);
    }

    /// A missing key's index moves with every write to the KV store: the same answer at a new
    /// index is not a change, a different answer is.
    #[tokio::test]
    async fn watch_loop_publishes_only_changed_answers() {
        use tokio::sync::mpsc;
        let (answer, answers) = mpsc::unbounded_channel::<Option<u32>>();
        let answers = std::sync::Arc::new(tokio::sync::Mutex::new(answers));
        let (tx, mut rx) = watch::channel::<Option<Option<u32>>>(None);
        let stop = CancellationToken::new();
        let mut index = 0;
        let task = tokio::spawn(watch_loop(
            "test",
            Duration::from_secs(1),
            move |_q| {
                // Every answer comes at a new index, as Consul's would.
                index += 10;
                let answers = answers.clone();
                async move {
                    match answers.lock().await.recv().await {
                        Some(v) => Ok((
                            v,
                            QueryMeta {
                                index,
                                ..Default::default()
                            },
                        )),
                        None => std::future::pending().await,
                    }
                }
            },
            tx,
            stop.clone(),
        ));
        for (v, published) in [
            (None, true),
            (None, false),
            (None, false),
            (Some(7), true),
            (Some(7), false),
            (None, true),
        ] {
            answer.send(v).unwrap();
            let got = tokio::time::timeout(Duration::from_millis(300), rx.changed()).await;
            assert_eq!(got.is_ok(), published, "answer {v:?}");
            if published {
                assert_eq!(*rx.borrow_and_update(), Some(v));
            }
        }
        stop.cancel();
        task.await.unwrap();
    }
}
