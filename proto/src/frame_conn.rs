//! A blocking frame exchange over any byte stream: a frame encoded and
//! written whole; bytes read into a buffer; whole frames decoded from it.
//! The reference client, the load generator and the tests all speak
//! through it, so what a read that brought nothing means is decided here
//! once: a read timeout, a would-block and an interrupted read are "no
//! data yet", not a broken connection.

use std::io::{self, Read, Write};

use crate::codec::{decode, DecodeError, Limits};
use crate::frame::Frame;

/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 16 * 1024;

/// What one read brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filled {
    /// This many bytes, now buffered.
    Bytes(usize),
    /// Nothing yet: the read timed out, would have blocked or was
    /// interrupted. The connection is as good as before.
    NotYet,
    /// The peer ended the stream.
    Closed,
}

/// One read() of at most `max` bytes from `stream`, appended to `buf`.
/// Errors other than "no data yet" ([`Filled::NotYet`]) are returned as
/// they came.
pub fn read_into(stream: &mut impl Read, buf: &mut Vec<u8>, max: usize) -> io::Result<Filled> {
    let old_len = buf.len();
    // Read straight into the buffer's tail: no second copy of the bytes.
    buf.resize(old_len + max, 0);
    let result = stream.read(&mut buf[old_len..]);
    buf.truncate(old_len + *result.as_ref().unwrap_or(&0));
    match result {
        Ok(0) => Ok(Filled::Closed),
        Ok(n) => Ok(Filled::Bytes(n)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(Filled::NotYet)
        }
        Err(e) => Err(e),
    }
}

/// Frames to and from a peer over `stream`. Waiting is the stream's: how
/// long a read may block (a socket read timeout) is the caller's to set.
pub struct FrameConn<S> {
    /// The byte stream: a socket, or TLS over one.
    pub stream: S,
    /// What frames from the peer are decoded within.
    pub limits: Limits,
    /// Received bytes; `buf[start..]` is not taken as frames yet.
    buf: Vec<u8>,
    start: usize,
    /// Reused for encoding outgoing frames.
    out: Vec<u8>,
}

impl<S> FrameConn<S> {
    pub fn new(stream: S, limits: Limits) -> FrameConn<S> {
        FrameConn {
            stream,
            limits,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            out: Vec::new(),
        }
    }

    /// The next whole frame buffered, taken; None until one is (see
    /// [`FrameConn::fill`]). An error means the stream cannot be trusted
    /// to be aligned on frames any more.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, DecodeError> {
        match decode(&self.buf[self.start..], &self.limits)? {
            Some((frame, used)) => {
                self.start += used;
                Ok(Some(frame))
            }
            None => Ok(None),
        }
    }

    /// Bytes received and not taken as frames yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The stream, and the bytes buffered: for a caller that reads on
    /// its own way (non-blocking, say) and must start with those.
    pub fn into_parts(mut self) -> (S, Vec<u8>) {
        self.buf.drain(..self.start);
        (self.stream, self.buf)
    }
}

impl<S: Read + Write> FrameConn<S> {
    /// Encodes `frame` and writes it whole, flushed. A failed write may
    /// leave the stream mid-frame: the connection is no good after it.
    pub fn send(&mut self, frame: &Frame<'_>) -> io::Result<()> {
        self.out.clear();
        frame.encode(&mut self.out);
        self.stream.write_all(&self.out)?;
        self.stream.flush()
    }

    /// One read into the buffer.
    pub fn fill(&mut self) -> io::Result<Filled> {
        // Drop what was taken before growing the buffer.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        read_into(&mut self.stream, &mut self.buf, READ_CHUNK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that reads from a script of results and keeps what is
    /// written.
    struct Scripted {
        reads: Vec<io::Result<Vec<u8>>>,
        written: Vec<u8>,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let bytes = self.reads.remove(0)?;
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A stream whose reads bring `reads`, one each.
    fn scripted(reads: Vec<Vec<u8>>) -> Scripted {
        Scripted {
            reads: reads.into_iter().map(Ok).collect(),
            written: Vec::new(),
        }
    }

    fn encoded(frame: &Frame<'_>) -> Vec<u8> {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        bytes
    }

    #[test]
    fn frames_split_across_reads_come_whole_and_in_order() {
        let mut wire = encoded(&Frame::Ping { nonce: 1 });
        wire.extend(encoded(&Frame::Pong { nonce: 2 }));
        let (first, rest) = wire.split_at(7);
        let stream = Scripted {
            reads: vec![
                Ok(first.to_vec()),
                Err(io::ErrorKind::TimedOut.into()),
                Err(io::ErrorKind::Interrupted.into()),
                Ok(rest.to_vec()),
                Ok(Vec::new()),
            ],
            written: Vec::new(),
        };
        let mut conn = FrameConn::new(stream, Limits::DEFAULT);
        assert_eq!(conn.fill().unwrap(), Filled::Bytes(7));
        assert_eq!(conn.next_frame().unwrap(), None);
        assert_eq!(conn.fill().unwrap(), Filled::NotYet);
        assert_eq!(conn.fill().unwrap(), Filled::NotYet);
        assert_eq!(conn.fill().unwrap(), Filled::Bytes(wire.len() - 7));
        assert_eq!(conn.next_frame().unwrap(), Some(Frame::Ping { nonce: 1 }));
        assert_eq!(conn.buffered(), &encoded(&Frame::Pong { nonce: 2 })[..]);
        assert_eq!(conn.next_frame().unwrap(), Some(Frame::Pong { nonce: 2 }));
        assert_eq!(conn.next_frame().unwrap(), None);
        assert_eq!(conn.fill().unwrap(), Filled::Closed);

        conn.send(&Frame::Ping { nonce: 3 }).unwrap();
        assert_eq!(conn.stream.written, encoded(&Frame::Ping { nonce: 3 }));
    }

    #[test]
    fn a_failed_read_is_returned_and_bytes_stay_buffered() {
        let reset = io::ErrorKind::ConnectionReset;
        let mut buf = b"kept".to_vec();
        let mut failing = Scripted {
            reads: vec![Err(reset.into())],
            written: Vec::new(),
        };
        let e = read_into(&mut failing, &mut buf, 64).unwrap_err();
        assert_eq!(e.kind(), reset);
        assert_eq!(buf, b"kept");

        let mut ping_and_more = encoded(&Frame::Ping { nonce: 4 });
        ping_and_more.extend([0, 0, 0]);
        let mut conn = FrameConn::new(scripted(vec![ping_and_more]), Limits::DEFAULT);
        conn.fill().unwrap();
        assert_eq!(conn.next_frame().unwrap(), Some(Frame::Ping { nonce: 4 }));
        let (_, rest) = conn.into_parts();
        assert_eq!(rest, [0, 0, 0]);

        let garbage = vec![0, 0, 0, 1, 0xEE];
        let mut conn = FrameConn::new(scripted(vec![garbage]), Limits::DEFAULT);
        conn.fill().unwrap();
        assert!(conn.next_frame().is_err(), "unknown frame type");
    }
}
