//! Bounded capture of a task's stdout/stderr.
//!
//! A [`Capture`] keeps at most `limit` bytes; everything past that is accepted
//! from the guest (so a chatty task still finishes) and dropped, and the
//! truncation is remembered. Optionally the kept bytes are also passed through
//! to the host's own stdout/stderr as they arrive (`wasmos run` without `--json`).

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Where kept output is echoed as it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    None,
    Stdout,
    Stderr,
}

#[derive(Debug)]
struct Inner {
    buf: Vec<u8>,
    limit: usize,
    truncated: bool,
    passthrough: Passthrough,
}

/// One bounded output stream. Cloning shares the same buffer.
#[derive(Debug, Clone)]
pub(crate) struct Capture(Arc<Mutex<Inner>>);

/// How much the guest may hand over per write: we never block it.
const WRITE_BUDGET: usize = 1 << 20;

impl Capture {
    pub(crate) fn new(limit: u64, passthrough: Passthrough) -> Capture {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Capture(Arc::new(Mutex::new(Inner { buf: Vec::new(), limit, truncated: false, passthrough })))
    }

    pub(crate) fn push_bytes(&self, bytes: &[u8]) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = inner.limit.saturating_sub(inner.buf.len());
        let keep = &bytes[..bytes.len().min(room)];
        if keep.len() < bytes.len() {
            inner.truncated = true;
        }
        if keep.is_empty() {
            return;
        }
        inner.buf.extend_from_slice(keep);
        // Echo errors (a closed terminal, a full pipe) are the host's business,
        // not the guest's: the captured copy stays authoritative.
        let _ = match inner.passthrough {
            Passthrough::None => Ok(()),
            Passthrough::Stdout => std::io::stdout().lock().write_all(keep),
            Passthrough::Stderr => std::io::stderr().lock().write_all(keep),
        };
    }

    /// Up to `max` kept bytes from `offset` on, and the offset after them.
    pub(crate) fn read_from(&self, offset: usize, max: usize) -> (Vec<u8>, usize) {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Past what is kept (or after `take` at the run's end): nothing new,
        // and never an offset before the one asked for.
        if offset >= inner.buf.len() {
            return (Vec::new(), offset);
        }
        let to = offset.saturating_add(max).min(inner.buf.len());
        (inner.buf[offset..to].to_vec(), to)
    }

    /// Takes the kept bytes and the truncation flag.
    pub(crate) fn take(&self) -> (Vec<u8>, bool) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut inner.buf), inner.truncated)
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        if self.0.lock().unwrap_or_else(|e| e.into_inner()).passthrough != Passthrough::None {
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
        }
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_limit_and_flags_truncation() {
        let c = Capture::new(5, Passthrough::None);
        c.push_bytes(b"abc");
        c.push_bytes(b"defgh");
        c.push_bytes(b"ij");
        let (buf, truncated) = c.take();
        assert_eq!(buf, b"abcde");
        assert!(truncated);
        let c = Capture::new(5, Passthrough::None);
        c.push_bytes(b"abcde");
        assert_eq!(c.take(), (b"abcde".to_vec(), false));
    }
}
