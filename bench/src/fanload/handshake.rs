//! Joining: a connection's handshake (and SUBSCRIBE), the descriptor
//! limit, a storm's rejoin, and writing what a subscriber has queued.

use super::*;

/// A connection past its handshake (and SUBSCRIBE, for a subscriber), still
/// blocking.
pub struct Joined {
    pub stream: TcpStream,
    /// Bytes read past the last answer awaited.
    pub buf: Vec<u8>,
    /// The sequence of the first event to come (1 where the protocol has
    /// none).
    pub next_seq: u64,
    /// A resume that could not be made whole (cluecast's NotRecovered or
    /// EpochChanged).
    pub gap: bool,
    /// The TLS session over `stream`, when joined with TLS; plaintext it
    /// had decrypted is in `buf`.
    pub tls: Option<Box<TlsLink>>,
}

/// Connects to `server` speaking `protocol` as `id` (over TLS with `tls`:
/// the appliance only; from the local address `source`, the appliance
/// only, when given), subscribing to `topic` if given, live or (where the
/// protocol can) resuming after a sequence; the server's limits and
/// heartbeat, if it announces them, go to `limits` and `heartbeat_ms`.
#[allow(clippy::too_many_arguments)]
pub fn join(
    protocol: Protocol,
    server: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
    id: &str,
    topic: Option<&str>,
    resume_after: Option<u64>,
    limits: &mut Limits,
    heartbeat_ms: &mut u32,
    tls: Option<&TlsClient>,
) -> Result<Joined, JoinError> {
    if let Protocol::Peer(peer) = protocol {
        if tls.is_some() || source.is_some() {
            return Err(JoinError::Failed(
                "TLS and source addresses are for the appliance only".into(),
            ));
        }
        let (stream, buf) = peers::join(peer, server, timeout, id, topic)?;
        return Ok(Joined {
            stream,
            buf,
            next_seq: 1,
            gap: false,
            tls: None,
        });
    }
    if let Some(tls) = tls {
        let mut c = dial::connect_tls_from(server, source, id, timeout, tls)?;
        (*limits, *heartbeat_ms) = (c.conn.limits, c.heartbeat_ms);
        let (next_seq, gap) = subscribe(&mut c, topic, resume_after, timeout)?;
        let (stream, mut buf) = c.conn.into_parts();
        let (link, stream) = TlsLink::from_stream(stream, &mut buf)?;
        return Ok(Joined {
            stream,
            buf,
            next_seq,
            gap,
            tls: Some(Box::new(link)),
        });
    }
    let mut c = dial::connect_from(server, source, id, timeout)?;
    (*limits, *heartbeat_ms) = (c.conn.limits, c.heartbeat_ms);
    let (next_seq, gap) = subscribe(&mut c, topic, resume_after, timeout)?;
    let (stream, buf) = c.conn.into_parts();
    Ok(Joined {
        stream,
        buf,
        next_seq,
        gap,
        tls: None,
    })
}

/// The SUBSCRIBE of [`join`], if `topic` is given: the sequence of the
/// first event to come, and whether a resume left a gap.
fn subscribe<S: net::Blocking>(
    c: &mut wire::Connected<S>,
    topic: Option<&str>,
    resume_after: Option<u64>,
    timeout: Duration,
) -> Result<(u64, bool), String> {
    Ok(match topic {
        Some(t) => {
            let s = c.subscribe(t.as_bytes(), resume_after, timeout)?;
            if resume_after.is_none() && s.status != SubscribeStatus::Ok {
                return Err(format!("SUBSCRIBED with status {:?}", s.status));
            }
            (s.next_seq, s.status != SubscribeStatus::Ok)
        }
        None => (1, false),
    })
}

/// Raises the open-file limit and checks the sockets fit well below it.
pub(super) fn check_descriptors(sockets: usize) -> Result<(), String> {
    let lim = cluecast_sys::raise_nofile_limit().map_err(|e| e.to_string())?;
    let need = sockets as u64 + FDS_SPARE;
    if need > lim.soft {
        return Err(format!(
            "{sockets} sockets need about {need} descriptors; the open-file limit is {}",
            lim.soft
        ));
    }
    Ok(())
}

/// Brings subscriber `i` back after a storm on a fresh connection (from
/// `source`, if given), resuming after the last sequence it had; Ok(true)
/// when the resume left a gap.
#[allow(clippy::too_many_arguments)]
pub(super) fn rejoin(
    s: &mut Sub,
    plan: &Plan,
    source: Option<IpAddr>,
    topic: &str,
    id: &str,
    inbox: (usize, usize),
    epoll: &Epoll,
    token: usize,
) -> Result<bool, JoinError> {
    let (mut limits, mut heartbeat_ms) = (Limits::DEFAULT, 0);
    let c = join(
        plan.protocol,
        plan.server,
        source,
        plan.connect_timeout,
        id,
        Some(topic),
        Some(s.next_seq - 1),
        &mut limits,
        &mut heartbeat_ms,
        plan.tls.as_ref(),
    )?;
    c.stream
        .set_nonblocking(true)
        .and_then(|_| net::enable_rx_timestamps(&c.stream))
        .map_err(|e| format!("socket options: {e}"))?;
    s.inbox = Inbox::new(&c.buf, inbox.0, inbox.1)?;
    s.stream = c.stream;
    s.tls = c.tls;
    s.next_seq = c.next_seq;
    s.away = false;
    s.back_ns = cluecast_sys::realtime_ns();
    s.caught_up_ns = None;
    epoll.ctl(libc::EPOLL_CTL_ADD, s.stream.as_raw_fd(), token, READABLE)?;
    Ok(c.gap)
}

/// Writes what a subscriber has queued (PINGs, positions) on the
/// connection it writes on; RESP's upstream replies are read and dropped.
pub(super) fn write_queued(s: &mut Sub) -> io::Result<()> {
    if let Some(tls) = s.tls.as_mut() {
        let (taken, _) = tls.send(&mut s.stream, &s.out)?;
        s.out.drain(..taken);
        return Ok(());
    }
    match s.upstream.as_mut() {
        Some(up) => {
            let mut sink = [0u8; 4096];
            loop {
                match io::Read::read(up, &mut sink) {
                    Ok(0) => return Err(io::Error::other("the upstream connection closed")),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            net::write_some(up, &mut s.out)
        }
        None => net::write_some(&mut s.stream, &mut s.out),
    }
}
