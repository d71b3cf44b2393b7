//! JSON bodies for the answers hyper sends on its own, before any handler runs, to a request
//! it cannot parse: 400 (a malformed request line or header), 414 (a URI over 64 KiB) and
//! 431 (a header section over the read buffer, or over 100 headers). hyper writes them with
//! an empty body and closes the connection; every other error of this server is a JSON
//! `{"error", "details"}` body, so the connection's writes are watched and such an answer is
//! replaced, as it is written, by the same status with a JSON body.
//!
//! An answer is recognised by its head alone: it starts the write (`HTTP/1.1 400 `, `414 `,
//! `431 `), says `content-length: 0` and has no `content-type`. The router never answers
//! an error like that (its errors are JSON), so nothing it sends is rewritten.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The acceptor wrapping every accepted connection (plain or after TLS) in [`JsonErrors`].
#[derive(Clone, Debug)]
pub struct JsonErrorsAcceptor<A>(pub A);

impl<I, S, A> axum_server::accept::Accept<I, S> for JsonErrorsAcceptor<A>
where
    A: axum_server::accept::Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send,
    A::Service: Send,
{
    type Stream = JsonErrors<A::Stream>;
    type Service = A::Service;
    type Future = Pin<
        Box<dyn std::future::Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>,
    >;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let inner = self.0.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = inner.await?;
            Ok((JsonErrors::new(stream), service))
        })
    }
}

/// A connection whose automatic parse-error answers get JSON bodies.
#[derive(Debug)]
pub struct JsonErrors<S> {
    inner: S,
    /// A replacement being written: its bytes, how many are written, and how many bytes of
    /// the caller's buffer it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> JsonErrors<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

/// The replacement of an automatic answer starting `buf`, and the length of that answer's
/// head in `buf`; `None` for any other write.
pub fn replacement(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (status, reason, message) = match buf.get(..13)? {
        b"HTTP/1.1 400 " => (
            400,
            "Bad Request",
            "the request could not be parsed (request line or a header is malformed)",
        ),
        b"HTTP/1.1 414 " => (
            414,
            "URI Too Long",
            "the request URI is longer than this server accepts (64 KiB)",
        ),
        b"HTTP/1.1 431 " => (
            431,
            "Request Header Fields Too Large",
            "the request's header section is larger than this server accepts (at most 100 headers, about 400 KiB)",
        ),
        _ => return None,
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if !head.contains("\r\ncontent-length: 0\r\n") || head.contains("\r\ncontent-type:") {
        return None;
    }
    let body = serde_json::json!({"error": message, "details": []}).to_string();
    let out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    Some((out.into_bytes(), end))
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes the pending replacement; ready with the caller's byte count once all is out.
    fn drive_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((bytes, written, stands_for)) = self.pending.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while *written < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = *stands_for;
        self.pending = None;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            if let Some((bytes, stands_for)) = replacement(buf) {
                this.pending = Some((bytes, 0, stands_for));
            }
        }
        if this.pending.is_some() {
            return this.drive_pending(cx);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                if let Some((bytes, stands_for)) = replacement(first) {
                    this.pending = Some((bytes, 0, stands_for));
                }
            }
        }
        if this.pending.is_some() {
            return this.drive_pending(cx);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending.is_some() {
            if let Poll::Ready(Err(e)) = this.drive_pending(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_answers_are_replaced_by_json() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let (out, n) = replacement(head).expect("replaced");
        assert_eq!(n, head.len());
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        assert!(text.contains("content-type: application/json"), "{text}");
        assert!(
            text.ends_with(r#""details":[]}"#) || text.contains(r#""error""#),
            "{text}"
        );
    }

    #[test]
    fn handler_answers_are_kept() {
        let json = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 30\r\n\r\n";
        assert!(replacement(json).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement(ok).is_none());
    }
}
