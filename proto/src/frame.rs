//! Frame types of protocol v1: the contract between the codec, the server and
//! every client. docs/PROTOCOL.md is the normative description of the bytes.

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// First four bytes of every HELLO body: lets the server reject a client that
/// speaks some other protocol with a clear error instead of a confusing one.
pub const HELLO_MAGIC: [u8; 4] = *b"CLUE";
/// Length prefix (u32, big-endian) plus the frame type byte.
pub const HEADER_BYTES: usize = 5;
/// Longest topic the wire format can carry (length is one byte).
pub const TOPIC_BYTES_HARD_MAX: usize = 255;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    Hello = 0x01,
    Welcome = 0x02,
    Subscribe = 0x03,
    Subscribed = 0x04,
    Unsubscribe = 0x05,
    Unsubscribed = 0x06,
    Publish = 0x10,
    PublishAck = 0x11,
    Event = 0x12,
    TopicClose = 0x13,
    TopicClosed = 0x14,
    Position = 0x20,
    PathQuery = 0x21,
    Path = 0x22,
    Ping = 0x30,
    Pong = 0x31,
    GoAway = 0x40,
    Error = 0x7f,
}

impl FrameType {
    /// Every frame type, in wire-value order.
    pub const ALL: [FrameType; 18] = [
        FrameType::Hello,
        FrameType::Welcome,
        FrameType::Subscribe,
        FrameType::Subscribed,
        FrameType::Unsubscribe,
        FrameType::Unsubscribed,
        FrameType::Publish,
        FrameType::PublishAck,
        FrameType::Event,
        FrameType::TopicClose,
        FrameType::TopicClosed,
        FrameType::Position,
        FrameType::PathQuery,
        FrameType::Path,
        FrameType::Ping,
        FrameType::Pong,
        FrameType::GoAway,
        FrameType::Error,
    ];

    /// The frame type with wire value `b`, `None` for an unknown value.
    pub const fn from_u8(b: u8) -> Option<FrameType> {
        Some(match b {
            0x01 => FrameType::Hello,
            0x02 => FrameType::Welcome,
            0x03 => FrameType::Subscribe,
            0x04 => FrameType::Subscribed,
            0x05 => FrameType::Unsubscribe,
            0x06 => FrameType::Unsubscribed,
            0x10 => FrameType::Publish,
            0x11 => FrameType::PublishAck,
            0x12 => FrameType::Event,
            0x13 => FrameType::TopicClose,
            0x14 => FrameType::TopicClosed,
            0x20 => FrameType::Position,
            0x21 => FrameType::PathQuery,
            0x22 => FrameType::Path,
            0x30 => FrameType::Ping,
            0x31 => FrameType::Pong,
            0x40 => FrameType::GoAway,
            0x7f => FrameType::Error,
            _ => return None,
        })
    }

    /// The name used in docs/PROTOCOL.md, e.g. `"PUBLISH_ACK"`.
    pub const fn name(self) -> &'static str {
        match self {
            FrameType::Hello => "HELLO",
            FrameType::Welcome => "WELCOME",
            FrameType::Subscribe => "SUBSCRIBE",
            FrameType::Subscribed => "SUBSCRIBED",
            FrameType::Unsubscribe => "UNSUBSCRIBE",
            FrameType::Unsubscribed => "UNSUBSCRIBED",
            FrameType::Publish => "PUBLISH",
            FrameType::PublishAck => "PUBLISH_ACK",
            FrameType::Event => "EVENT",
            FrameType::TopicClose => "TOPIC_CLOSE",
            FrameType::TopicClosed => "TOPIC_CLOSED",
            FrameType::Position => "POSITION",
            FrameType::PathQuery => "PATH_QUERY",
            FrameType::Path => "PATH",
            FrameType::Ping => "PING",
            FrameType::Pong => "PONG",
            FrameType::GoAway => "GOAWAY",
            FrameType::Error => "ERROR",
        }
    }

    /// True for frames only a client sends (the server refuses the others
    /// from a client with `UnexpectedFrame`); PING and PONG go both ways.
    pub const fn sent_by_client(self) -> bool {
        matches!(
            self,
            FrameType::Hello
                | FrameType::Subscribe
                | FrameType::Unsubscribe
                | FrameType::Publish
                | FrameType::TopicClose
                | FrameType::Position
                | FrameType::PathQuery
                | FrameType::Ping
                | FrameType::Pong
        )
    }

    /// True for frames only a server sends; PING and PONG go both ways.
    pub const fn sent_by_server(self) -> bool {
        !self.sent_by_client() || matches!(self, FrameType::Ping | FrameType::Pong)
    }
}

impl std::fmt::Display for FrameType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a frame or request was refused. Sent in ERROR (then the server closes)
/// and in PUBLISH_ACK.status, TOPIC_CLOSED.status and PATH.status (then the
/// connection stays open).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The body does not match the frame type's layout.
    Malformed = 1,
    /// The length prefix is above the negotiated frame limit.
    FrameTooLarge = 2,
    UnknownFrameType = 3,
    UnsupportedVersion = 4,
    /// A frame that is not allowed in the connection's state or direction
    /// (anything but HELLO first, a second HELLO, a server-only frame).
    UnexpectedFrame = 5,
    /// Empty, too long, or a byte outside `[A-Za-z0-9_.:-]`.
    InvalidTopic = 6,
    TooManySubscriptions = 7,
    PayloadTooLarge = 8,
    InvalidPosition = 9,
    HandshakeTimeout = 10,
    IdleTimeout = 11,
    NotAuthorized = 12,
    /// The server could not take the request now (e.g. its memory for
    /// in-flight publishes is full, or a PATH_QUERY of the connection is
    /// still being answered); retrying later may succeed.
    Overloaded = 13,
    NotSubscribed = 14,
    /// The server could not store the event (disk full, unwritable data
    /// directory); nothing was published. Retrying later may succeed. As a
    /// PATH status: the server keeps no paths (history in memory only) or
    /// cannot read them.
    StorageFailed = 15,
}

impl ErrorCode {
    /// Every error code, in wire-value order.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::Malformed,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownFrameType,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnexpectedFrame,
        ErrorCode::InvalidTopic,
        ErrorCode::TooManySubscriptions,
        ErrorCode::PayloadTooLarge,
        ErrorCode::InvalidPosition,
        ErrorCode::HandshakeTimeout,
        ErrorCode::IdleTimeout,
        ErrorCode::NotAuthorized,
        ErrorCode::Overloaded,
        ErrorCode::NotSubscribed,
        ErrorCode::StorageFailed,
    ];

    /// The variant name, as used in docs/PROTOCOL.md (e.g. `"InvalidTopic"`).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "Malformed",
            ErrorCode::FrameTooLarge => "FrameTooLarge",
            ErrorCode::UnknownFrameType => "UnknownFrameType",
            ErrorCode::UnsupportedVersion => "UnsupportedVersion",
            ErrorCode::UnexpectedFrame => "UnexpectedFrame",
            ErrorCode::InvalidTopic => "InvalidTopic",
            ErrorCode::TooManySubscriptions => "TooManySubscriptions",
            ErrorCode::PayloadTooLarge => "PayloadTooLarge",
            ErrorCode::InvalidPosition => "InvalidPosition",
            ErrorCode::HandshakeTimeout => "HandshakeTimeout",
            ErrorCode::IdleTimeout => "IdleTimeout",
            ErrorCode::NotAuthorized => "NotAuthorized",
            ErrorCode::Overloaded => "Overloaded",
            ErrorCode::NotSubscribed => "NotSubscribed",
            ErrorCode::StorageFailed => "StorageFailed",
        }
    }

    /// Name of a code received on the wire, `"unknown"` for a value this
    /// version does not define (newer servers may add codes).
    pub fn name_of(code: u16) -> &'static str {
        ErrorCode::try_from(code).map_or("unknown", ErrorCode::name)
    }
}

impl TryFrom<u16> for ErrorCode {
    /// The unknown value.
    type Error = u16;

    fn try_from(v: u16) -> Result<ErrorCode, u16> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| *c as u16 == v)
            .ok_or(v)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    pub version_min: u16,
    pub version_max: u16,
    pub client_id: &'a [u8],
    pub token: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub version: u16,
    /// How often the client should PING when it has sent nothing else.
    pub heartbeat_ms: u32,
    /// The server closes a connection that sends nothing for this long.
    pub idle_timeout_ms: u32,
    pub frame_bytes_max: u32,
    pub payload_bytes_max: u32,
    pub subscriptions_max: u16,
    pub topic_bytes_max: u8,
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StartMode {
    /// Only events published after the subscription.
    Live = 0,
    /// Every retained event with `seq > last_seq` in `epoch`, then live.
    /// `epoch == 0` means "the topic's current epoch, whatever it is".
    Resume = 1,
}

impl StartMode {
    /// `None` for a value this version does not define.
    pub const fn from_u8(b: u8) -> Option<StartMode> {
        match b {
            0 => Some(StartMode::Live),
            1 => Some(StartMode::Resume),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub mode: StartMode,
    pub epoch: u64,
    pub last_seq: u64,
    pub topic: &'a [u8],
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscribeStatus {
    /// Live, or resumed with nothing missing.
    Ok = 0,
    /// Some requested events are no longer retained: delivery starts at
    /// `oldest_seq`.
    NotRecovered = 1,
    /// The topic's history was reset since the client's epoch: its sequences
    /// mean nothing now; delivery starts at `oldest_seq` of the new epoch.
    EpochChanged = 2,
    /// The connection's token does not allow subscribing to the topic: no
    /// subscription was made (the connection stays open).
    NotAuthorized = 3,
}

impl SubscribeStatus {
    /// `None` for a value this version does not define.
    pub const fn from_u8(b: u8) -> Option<SubscribeStatus> {
        match b {
            0 => Some(SubscribeStatus::Ok),
            1 => Some(SubscribeStatus::NotRecovered),
            2 => Some(SubscribeStatus::EpochChanged),
            3 => Some(SubscribeStatus::NotAuthorized),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscribed<'a> {
    pub status: SubscribeStatus,
    pub epoch: u64,
    /// Oldest retained sequence, 0 when nothing is retained.
    pub oldest_seq: u64,
    /// Newest sequence assigned when the subscription started, 0 when none.
    pub last_seq: u64,
    pub topic: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    pub request_id: u32,
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

/// `PublishAck::flags` bit: the event is on stable storage.
pub const ACK_FLAG_DURABLE: u8 = 0x01;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishAck {
    pub request_id: u32,
    /// 0 on success, else an [`ErrorCode`] value; `seq` and `epoch` are 0 then.
    pub status: u16,
    pub flags: u8,
    pub epoch: u64,
    pub seq: u64,
}

impl PublishAck {
    /// Every PUBLISH_ACK's encoded size, header included.
    pub const ENCODED_BYTES: usize = HEADER_BYTES + 4 + 2 + 1 + 8 + 8;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    pub seq: u64,
    pub epoch: u64,
    /// Wall-clock time (ns since the Unix epoch) at which the server sequenced it.
    pub publish_ts_ns: u64,
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

/// A request to end a topic: the server deletes its whole history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicClose<'a> {
    /// Chosen by the client, echoed in the TOPIC_CLOSED that answers it.
    pub request_id: u32,
    pub topic: &'a [u8],
}

/// The answer to a [`TopicClose`] (its `request_id`), or, with `request_id`
/// 0, the notice to a subscriber that the topic was closed: its subscription
/// has ended and must not be resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicClosed<'a> {
    /// The TOPIC_CLOSE's; 0 in the notice to subscribers.
    pub request_id: u32,
    /// 0 = closed, else an [`ErrorCode`] value (then nothing was deleted).
    pub status: u16,
    /// The topic's last sequence when it was closed; 0 if it had none, or
    /// on refusal.
    pub last_seq: u64,
    pub topic: &'a [u8],
}

impl TopicClosed<'_> {
    /// A TOPIC_CLOSED's encoded size, header included, without its topic.
    pub const ENCODED_BYTES_BEFORE_TOPIC: usize = HEADER_BYTES + 4 + 2 + 8 + 1;
}

/// A position fix, in fixed point so every client encodes it identically.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Latitude in 1e-7 degrees, -90e7..=90e7.
    pub lat_e7: i32,
    /// Longitude in 1e-7 degrees, -180e7..=180e7.
    pub lon_e7: i32,
    /// Horizontal accuracy radius in centimetres.
    pub accuracy_cm: u32,
    /// Client clock, ms since the Unix epoch, non-zero.
    pub client_ts_ms: u64,
}

/// Size of a [`Position`] on the wire: the POSITION body, and one record of
/// a PATH.
pub const POSITION_BYTES: usize = 20;

impl Position {
    /// Largest `lat_e7` magnitude: 90 degrees.
    pub const LAT_E7_MAX: i32 = 900_000_000;
    /// Largest `lon_e7` magnitude: 180 degrees.
    pub const LON_E7_MAX: i32 = 1_800_000_000;
    /// Largest accepted `accuracy_cm`: 100 km; anything vaguer is not a fix.
    pub const ACCURACY_CM_MAX: u32 = 10_000_000;

    /// Checks the ranges documented on the fields; the server refuses a
    /// POSITION that fails this with `InvalidPosition`.
    pub fn validate(&self) -> Result<(), ErrorCode> {
        let ok = (-Self::LAT_E7_MAX..=Self::LAT_E7_MAX).contains(&self.lat_e7)
            && (-Self::LON_E7_MAX..=Self::LON_E7_MAX).contains(&self.lon_e7)
            && self.accuracy_cm <= Self::ACCURACY_CM_MAX
            && self.client_ts_ms != 0;
        if ok {
            Ok(())
        } else {
            Err(ErrorCode::InvalidPosition)
        }
    }

    /// The wire encoding: `lat_e7` i32, `lon_e7` i32, `accuracy_cm` u32,
    /// `client_ts_ms` u64, big-endian. The body of POSITION, and one record
    /// of PATH.
    pub fn to_bytes(&self) -> [u8; POSITION_BYTES] {
        let mut b = [0u8; POSITION_BYTES];
        b[0..4].copy_from_slice(&self.lat_e7.to_be_bytes());
        b[4..8].copy_from_slice(&self.lon_e7.to_be_bytes());
        b[8..12].copy_from_slice(&self.accuracy_cm.to_be_bytes());
        b[12..20].copy_from_slice(&self.client_ts_ms.to_be_bytes());
        b
    }

    /// Reads what [`Position::to_bytes`] writes. Every 20 bytes are some
    /// position; ranges are not checked (see [`Position::validate`]).
    pub fn from_bytes(b: &[u8; POSITION_BYTES]) -> Position {
        Position {
            lat_e7: i32::from_be_bytes(field(b, 0)),
            lon_e7: i32::from_be_bytes(field(b, 4)),
            accuracy_cm: u32::from_be_bytes(field(b, 8)),
            client_ts_ms: u64::from_be_bytes(field(b, 12)),
        }
    }
}

/// The `N` bytes of an encoded position that start at `at`.
fn field<const N: usize>(b: &[u8; POSITION_BYTES], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// A request for the stored path of one player.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathQuery<'a> {
    /// Chosen by the client, echoed in every PATH frame of the answer.
    pub request_id: u32,
    /// Only positions whose `client_ts_ms` is at least this; 0 for the
    /// whole path.
    pub since_ms: u64,
    /// The player: the HELLO `client_id` its phone sent, 1 to
    /// `Limits::client_id_bytes_max` bytes.
    pub player: &'a [u8],
}

/// `Path::flags` bit: the final frame of the answer.
pub const PATH_FLAG_LAST: u8 = 0x01;
/// `Path::flags` bit (only with LAST): the answer stopped at the server's
/// limit; query again with `since_ms` = the last position's `client_ts_ms + 1`.
pub const PATH_FLAG_TRUNCATED: u8 = 0x02;
/// `Path::flags` bit: some stored positions could not be read and are
/// missing from the answer.
pub const PATH_FLAG_CORRUPT: u8 = 0x04;

/// One frame of the answer to a [`PathQuery`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path<'a> {
    /// The PATH_QUERY's.
    pub request_id: u32,
    /// 0 = ok, else an [`ErrorCode`] value; then there are no positions and
    /// LAST is set.
    pub status: u16,
    /// `PATH_FLAG_*` bits.
    pub flags: u8,
    /// The positions as on the wire: [`POSITION_BYTES`]-byte records, in
    /// arrival order; read them with [`Path::positions`].
    pub positions: &'a [u8],
}

impl Path<'_> {
    /// The positions, decoded. (A length that is not a multiple of
    /// [`POSITION_BYTES`] cannot be decoded nor encoded; a trailing partial
    /// record would be skipped.)
    pub fn positions(&self) -> impl Iterator<Item = Position> + '_ {
        self.positions
            .chunks_exact(POSITION_BYTES)
            .filter_map(|record| record.first_chunk().map(Position::from_bytes))
    }
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GoAwayReason {
    Shutdown = 0,
    SlowConsumer = 1,
    ServerFull = 2,
    /// The connection's token expired: reconnect with a new one and resume.
    TokenExpired = 3,
}

impl GoAwayReason {
    /// `None` for a value this version does not define.
    pub const fn from_u8(b: u8) -> Option<GoAwayReason> {
        match b {
            0 => Some(GoAwayReason::Shutdown),
            1 => Some(GoAwayReason::SlowConsumer),
            2 => Some(GoAwayReason::ServerFull),
            3 => Some(GoAwayReason::TokenExpired),
            _ => None,
        }
    }
}

/// Where a subscription stood when the server sent GOAWAY: the last sequence
/// whose frame the server handed to the socket in full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePoint<'a> {
    pub epoch: u64,
    pub last_seq: u64,
    pub topic: &'a [u8],
}

/// Most entries a GOAWAY resume list may carry.
pub const GOAWAY_RESUME_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoAway<'a> {
    pub reason: GoAwayReason,
    /// Wait at least this long before reconnecting (already jittered).
    pub retry_after_ms: u32,
    /// `host:port` to reconnect to, empty for "the same place".
    pub reconnect: &'a [u8],
    pub resume: Vec<ResumePoint<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorFrame<'a> {
    pub code: u16,
    pub message: &'a [u8],
}

impl ErrorFrame<'_> {
    /// The longest text an ERROR carries (its length is one byte).
    pub const MESSAGE_BYTES_MAX: usize = 255;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello(Hello<'a>),
    Welcome(Welcome),
    Subscribe(Subscribe<'a>),
    Subscribed(Subscribed<'a>),
    Unsubscribe { topic: &'a [u8] },
    Unsubscribed { topic: &'a [u8] },
    Publish(Publish<'a>),
    PublishAck(PublishAck),
    Event(Event<'a>),
    TopicClose(TopicClose<'a>),
    TopicClosed(TopicClosed<'a>),
    Position(Position),
    PathQuery(PathQuery<'a>),
    Path(Path<'a>),
    Ping { nonce: u64 },
    Pong { nonce: u64 },
    GoAway(GoAway<'a>),
    Error(ErrorFrame<'a>),
}
