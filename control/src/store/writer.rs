//! Runs a CDR store on its own thread: the engine hands CDRs over a channel and never waits for
//! the database. A write that fails is retried with backoff (a database restart must not lose
//! CDRs) while later CDRs queue behind it in order.

use std::{
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};

use super::{CdrStore, StoreError};
use crate::engine::Cdr;

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

fn run(mut store: Box<dyn CdrStore>, rx: Receiver<Msg>) {
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Write(cdr) => write_with_retry(store.as_mut(), &cdr),
            Msg::Flush(done) => {
                let _ = done.send(());
            }
            Msg::Stop => break,
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
