//! The simulated sockets: the files behind the fake descriptors (listeners
//! and accepted sockets, alive until closed and unreferenced), the clients
//! the test driver plays, and the driver's calls on them.

use std::collections::VecDeque;

use super::*;

/// A listener or accepted socket. Like the kernel's struct file, it lives
/// until the descriptor is closed and no in-flight operation references it.
pub(super) struct File {
    pub(super) open: bool,
    pub(super) refs: u32,
    pub(super) kind: FileKind,
}

pub(super) enum FileKind {
    Listener { backlog: VecDeque<ClientId> },
    Socket { client: ClientId },
}

/// One connection, seen from the client the test driver plays.
pub(super) struct Client {
    /// Written by the client, not yet received by the server.
    pub(super) inbound: VecDeque<u8>,
    /// Sent by the server, not yet read by the client.
    pub(super) outbound: Vec<u8>,
    /// How many unread bytes may sit in `outbound`.
    pub(super) window: usize,
    pub(super) accepted: bool,
    pub(super) fin: bool,
    pub(super) reset: bool,
    /// The server's last reference to the socket is gone.
    server_gone: bool,
}

impl SimNet {
    /// A new listening socket.
    pub fn listen(&self) -> RawFd {
        let mut world = self.world();
        let fd = world.alloc_fd();
        let backlog = VecDeque::new();
        world
            .files
            .insert(fd, File::new(FileKind::Listener { backlog }));
        fd
    }

    /// A new client, queued for accept on `listener`.
    pub fn connect(&self, listener: RawFd) -> ClientId {
        let mut world = self.world();
        let client = world.clients.len();
        let window = world.config.socket_buffer_bytes;
        let file = world.files.get_mut(&listener).filter(|f| !f.released());
        let Some(File {
            kind: FileKind::Listener { backlog },
            ..
        }) = file
        else {
            panic!("sim: connect to fd {listener}, which is not a live listener");
        };
        backlog.push_back(client);
        world.clients.push(Client {
            inbound: VecDeque::new(),
            outbound: Vec::new(),
            window,
            accepted: false,
            fin: false,
            reset: false,
            server_gone: false,
        });
        client
    }

    pub fn client_write(&self, client: ClientId, bytes: &[u8]) {
        let mut world = self.world();
        let c = world.client(client);
        assert!(
            !c.fin && !c.reset,
            "sim: client {client} writes after closing"
        );
        c.inbound.extend(bytes);
    }

    /// Drains what the server sent so far.
    pub fn client_read(&self, client: ClientId) -> Vec<u8> {
        std::mem::take(&mut self.world().client(client).outbound)
    }

    /// FIN: the server receives EOF after the pending bytes, and its sends
    /// fail with -EPIPE.
    pub fn client_close(&self, client: ClientId) {
        self.world().client(client).fin = true;
    }

    /// RST: the server's receives and sends fail with -ECONNRESET, and bytes
    /// it has not received yet are lost.
    pub fn client_reset(&self, client: ClientId) {
        let mut world = self.world();
        let c = world.client(client);
        c.reset = true;
        c.inbound.clear();
        c.outbound.clear();
    }

    /// How many unread bytes may sit at the client; 0 = stopped reading.
    pub fn client_set_window(&self, client: ClientId, bytes: usize) {
        self.world().client(client).window = bytes;
    }

    /// The server closed its side and the client has read everything.
    pub fn client_eof(&self, client: ClientId) -> bool {
        let mut world = self.world();
        let c = world.client(client);
        c.server_gone && c.outbound.is_empty()
    }

    pub fn client_was_accepted(&self, client: ClientId) -> bool {
        self.world().client(client).accepted
    }

    /// Accepted sockets the server has not closed: the leak check.
    pub fn open_server_fds(&self) -> usize {
        let world = self.view();
        let files = world.files.values();
        files
            .filter(|f| f.open && matches!(f.kind, FileKind::Socket { .. }))
            .count()
    }
}

impl File {
    pub(super) fn new(kind: FileKind) -> File {
        File {
            open: true,
            refs: 0,
            kind,
        }
    }

    pub(super) fn released(&self) -> bool {
        !self.open && self.refs == 0
    }
}

impl World {
    fn client(&mut self, client: ClientId) -> &mut Client {
        let count = self.clients.len();
        let found = self.clients.get_mut(client);
        found.unwrap_or_else(|| panic!("sim: no client {client} (have {count})"))
    }

    /// The client behind a socket that `check` vetted at push time.
    pub(super) fn socket_client(&self, fd: RawFd) -> ClientId {
        match self.files[&fd].kind {
            FileKind::Socket { client } => client,
            FileKind::Listener { .. } => unreachable!("sim: checked at push"),
        }
    }

    pub(super) fn drop_ref(&mut self, fd: RawFd) {
        let file = self
            .files
            .get_mut(&fd)
            .expect("sim: referenced file exists");
        file.refs -= 1;
        if file.released() {
            self.release(fd);
        }
    }

    /// The server's last reference to a file is gone, so its peer sees the
    /// end: EOF for a connection, refusal for connections still queued on a
    /// listener.
    pub(super) fn release(&mut self, fd: RawFd) {
        let gone = match &mut self.files.get_mut(&fd).expect("sim: file exists").kind {
            FileKind::Socket { client } => vec![*client],
            FileKind::Listener { backlog } => std::mem::take(backlog).into(),
        };
        for client in gone {
            self.clients[client].server_gone = true;
        }
    }
}
