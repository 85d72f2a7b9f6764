//! Runs a CDR store on its own thread: the engine hands CDRs over a channel and never waits for
//! the database. A write that fails is retried with backoff (a database restart must not lose
//! CDRs) while later CDRs queue behind it in order.
//!
//! Batching: after the first CDR of a batch arrives the writer gathers for at most
//! [`GATHER`] (or [`MAX_BATCH`] rows), then writes the batch in one transaction, a row written
//! twice in it (answered and ended within the window) only in its last version. Every CDR
//! handed over is in the database within about `GATHER` plus the write itself; at thousands
//! of calls per second this is one commit and one wake-up of the writer per few dozen rows
//! instead of one per row.

use std::{
    collections::HashMap,
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};

use super::{CdrStore, StoreError};
use crate::engine::Cdr;

/// Longest a CDR waits for others to share its transaction.
pub const GATHER: Duration = Duration::from_millis(2);
/// Most rows in one transaction.
pub const MAX_BATCH: usize = 512;

enum Msg {
    Write(Box<Cdr>),
    Flush(Sender<()>),
    Stop,
}

/// The engine's side of the CDR writer.
pub struct CdrWriter {
    tx: Sender<Msg>,
    thread: Option<thread::JoinHandle<()>>,
}

impl CdrWriter {
    /// Starts the writer thread around `store`, first closing rows a previous run left open.
    pub fn start(mut store: Box<dyn CdrStore>, now_ms: i64) -> Result<Self, StoreError> {
        let closed = store.close_open_rows(now_ms)?;
        if closed > 0 {
            tracing::warn!(
                closed,
                "CDRs of calls active before the restart closed with reason 'restart'"
            );
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = thread::Builder::new()
            .name("rtpedge-cdr".into())
            .spawn(move || run(store, rx))
            .map_err(|e| StoreError::Location(format!("starting the CDR writer: {e}")))?;
        Ok(Self {
            tx,
            thread: Some(thread),
        })
    }

    /// Queues a CDR (never blocks).
    pub fn write(&self, cdr: Cdr) {
        if self.tx.send(Msg::Write(Box::new(cdr))).is_err() {
            tracing::error!("CDR writer gone; CDR lost");
        }
    }

    /// Waits until everything queued so far is written (or `timeout` passes).
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx.send(Msg::Flush(tx)).is_ok() && rx.recv_timeout(timeout).is_ok()
    }
}

impl Drop for CdrWriter {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Nice value of the writer thread: the control thread and the bridge workers win the CPU
/// when they share it with the writer (a WAL checkpoint is milliseconds of CPU and I/O); the
/// writer still gets its share, and a longer queue only makes its batches bigger.
const WRITER_NICE: libc::c_int = 10;

fn run(mut store: Box<dyn CdrStore>, rx: Receiver<Msg>) {
    // SAFETY: plain syscalls on the calling thread (on Linux, PRIO_PROCESS with a thread id
    // sets that thread's nice value).
    let r = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            WRITER_NICE,
        )
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "CDR writer priority unchanged");
    }
    let mut batch: Vec<Box<Cdr>> = Vec::with_capacity(MAX_BATCH);
    let mut done: Vec<Sender<()>> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut stop = false;
        let deadline = Instant::now() + GATHER;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Msg::Write(cdr)) => batch.push(cdr),
                Some(Msg::Flush(tx)) => {
                    // Whoever flushes waits: write what is queued now.
                    done.push(tx);
                    while let Ok(m) = rx.try_recv() {
                        match m {
                            Msg::Write(cdr) => batch.push(cdr),
                            Msg::Flush(tx) => done.push(tx),
                            Msg::Stop => stop = true,
                        }
                    }
                    break;
                }
                Some(Msg::Stop) => {
                    stop = true;
                    break;
                }
                None => {}
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            // Sleeping (rather than blocking on the channel) lets the engine queue CDRs
            // without waking this thread for each.
            match rx.try_recv() {
                Ok(m) => next = Some(m),
                Err(_) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    thread::sleep(left);
                    match rx.try_recv() {
                        Ok(m) => next = Some(m),
                        Err(_) => break,
                    }
                }
            }
        }
        write_batch(store.as_mut(), &batch);
        batch.clear();
        for d in done.drain(..) {
            let _ = d.send(());
        }
        if stop {
            break;
        }
    }
}

/// Writes a batch in one transaction: each row once, in its last version, in the order of
/// first appearance.
fn write_batch(store: &mut dyn CdrStore, batch: &[Box<Cdr>]) {
    if batch.is_empty() {
        return;
    }
    let mut last: HashMap<(&str, i64), usize> = HashMap::with_capacity(batch.len());
    for (i, c) in batch.iter().enumerate() {
        last.insert((c.call_id.as_str(), c.offer_at), i);
    }
    let rows: Vec<&Cdr> = batch
        .iter()
        .enumerate()
        .filter(|(i, c)| last.get(&(c.call_id.as_str(), c.offer_at)) == Some(i))
        .map(|(_, c)| c.as_ref())
        .collect();
    if let Err(e) = store.upsert_batch(&rows) {
        // Row by row, each retried with backoff as before batching: a database restart
        // loses nothing, and one bad row does not hold the others back.
        tracing::warn!(rows = rows.len(), error = %e, "CDR batch write failed; writing row by row");
        for c in rows {
            write_with_retry(store, c);
        }
    }
}

fn write_with_retry(store: &mut dyn CdrStore, cdr: &Cdr) {
    let mut backoff = Duration::from_millis(50);
    let give_up = Instant::now() + Duration::from_secs(300);
    loop {
        match store.upsert(cdr) {
            Ok(()) => return,
            Err(e) if Instant::now() < give_up => {
                tracing::warn!(call = %cdr.call_id, error = %e, "CDR write failed; retrying");
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(call = %cdr.call_id, error = %e, ?cdr, "CDR write failed for 5 minutes; CDR logged here and dropped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{engine::EndReason, store::sqlite::tests::sample};

    /// Records each batch; the batch write fails while `fail_batches` is set.
    #[derive(Clone, Default)]
    struct Recording {
        batches: Arc<Mutex<Vec<Vec<Cdr>>>>,
        fail_batches: bool,
    }

    impl CdrStore for Recording {
        fn upsert(&mut self, cdr: &Cdr) -> Result<(), StoreError> {
            self.batches.lock().unwrap().push(vec![cdr.clone()]);
            Ok(())
        }
        fn upsert_batch(&mut self, cdrs: &[&Cdr]) -> Result<(), StoreError> {
            if self.fail_batches {
                return Err(StoreError::Location("batch refused".into()));
            }
            self.batches
                .lock()
                .unwrap()
                .push(cdrs.iter().map(|c| (*c).clone()).collect());
            Ok(())
        }
        fn close_open_rows(&mut self, _: i64) -> Result<usize, StoreError> {
            Ok(0)
        }
        fn by_call_id(&mut self, _: &str) -> Result<Vec<Cdr>, StoreError> {
            Ok(Vec::new())
        }
    }

    fn ended(call_id: &str) -> Cdr {
        let mut c = sample(call_id);
        c.end_at = Some(5_000);
        c.end_reason = Some(EndReason::Delete);
        c.duration_ms = 3_000;
        c
    }

    /// The last version written of each row, in write order.
    fn final_rows(batches: &[Vec<Cdr>]) -> HashMap<String, Cdr> {
        let mut m = HashMap::new();
        for c in batches.iter().flatten() {
            m.insert(c.call_id.clone(), c.clone());
        }
        m
    }

    #[test]
    fn batches_keep_the_last_version_of_each_row_and_flush_waits_for_them() {
        let store = Recording::default();
        let batches = Arc::clone(&store.batches);
        let w = CdrWriter::start(Box::new(store), 0).unwrap();
        for i in 0..100 {
            w.write(sample(&format!("c{i}")));
            w.write(ended(&format!("c{i}")));
        }
        assert!(w.flush(Duration::from_secs(10)));
        let batches = batches.lock().unwrap().clone();
        let rows = final_rows(&batches);
        assert_eq!(rows.len(), 100);
        assert!(
            rows.values()
                .all(|c| c.end_reason == Some(EndReason::Delete))
        );
        for b in &batches {
            let keys: std::collections::HashSet<_> = b.iter().map(|c| &c.call_id).collect();
            assert_eq!(keys.len(), b.len(), "a row at most once per transaction");
        }
        assert!(
            batches.len() < 200,
            "rows share transactions ({} batches for 200 writes)",
            batches.len()
        );
    }

    #[test]
    fn the_writer_thread_yields_the_cpu_to_the_control_path() {
        let w = CdrWriter::start(Box::new(Recording::default()), 0).unwrap();
        assert!(w.flush(Duration::from_secs(10)), "the writer runs");
        // Ours is niced by now (other tests' writers may be starting: at least one).
        let mut niced = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = task.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim() != "rtpedge-cdr" {
                continue;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
            // Fields after the parenthesised command: state is field 3, nice field 19.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let nice: i32 = rest.split_whitespace().nth(16).unwrap().parse().unwrap();
            if nice == WRITER_NICE {
                niced += 1;
            }
        }
        assert!(
            niced >= 1,
            "no CDR writer thread runs at nice {WRITER_NICE}"
        );
    }

    #[test]
    fn a_failed_batch_is_written_row_by_row() {
        let store = Recording {
            fail_batches: true,
            ..Recording::default()
        };
        let batches = Arc::clone(&store.batches);
        let w = CdrWriter::start(Box::new(store), 0).unwrap();
        w.write(sample("a"));
        w.write(ended("b"));
        assert!(w.flush(Duration::from_secs(10)));
        let rows = final_rows(&batches.lock().unwrap());
        assert_eq!(rows.len(), 2);
        assert_eq!(rows["b"].end_reason, Some(EndReason::Delete));
    }
}
