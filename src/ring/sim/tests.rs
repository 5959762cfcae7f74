//! The simulation's own tests: the kernel's rules and each fault, one
//! operation kind at a time; the panics that name a broken contract; and
//! that a seed replays a run exactly.

use super::*;
use crate::ring::{Completion, Op, Ring, F_MORE, F_NOTIF};

const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
const CANCEL: u64 = 4;
const CLOSE: u64 = 5;

fn net(seed: u64, faults: bool) -> SimNet {
    SimNet::new(SimConfig {
        faults,
        ..SimConfig::new(seed)
    })
}

/// One loop turn: submit, wait up to 10 ms, reap.
fn turn(ring: &mut SimRing) -> Vec<Completion> {
    ring.submit_and_wait(10).unwrap();
    let mut out = Vec::new();
    ring.reap(&mut out);
    out
}

/// A connected client and its server fd, with no operation left in flight.
fn connection(net: &SimNet, ring: &mut SimRing) -> (ClientId, RawFd) {
    let listener = net.listen();
    let client = net.connect(listener);
    ring.push(Op::AcceptMulti { listener }, ACCEPT);
    let accepted = turn(ring);
    assert_eq!(accepted.len(), 1);
    if accepted[0].more() {
        ring.push(Op::Cancel { target: ACCEPT }, CANCEL);
        turn(ring);
    }
    assert_eq!(net.ops_in_flight(), 0);
    (client, accepted[0].result)
}

fn send(fd: RawFd, bytes: &[u8]) -> Op {
    Op::Send {
        fd,
        ptr: bytes.as_ptr(),
        len: bytes.len() as u32,
    }
}

/// A fault-free world from `seed` with one connected client.
fn connected(seed: u64) -> (SimNet, SimRing, ClientId, RawFd) {
    let net = net(seed, false);
    let mut ring = net.ring();
    let (client, fd) = connection(&net, &mut ring);
    (net, ring, client, fd)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn accept_multishot_yields_fds_and_rearms_after_termination() {
    let net = net(1, true);
    let mut ring = net.ring();
    let listener = net.listen();
    let clients: Vec<ClientId> = (0..300).map(|_| net.connect(listener)).collect();
    let mut fds = Vec::new();
    let mut armed = false;
    let mut ends = 0;
    for _ in 0..1000 {
        if fds.len() == clients.len() {
            break;
        }
        if !armed {
            ring.push(Op::AcceptMulti { listener }, ACCEPT);
            armed = true;
        }
        for c in turn(&mut ring) {
            assert_eq!(c.user_data, ACCEPT);
            assert!(c.result >= FIRST_FD, "accept failed: {c:?}");
            assert!(!fds.contains(&c.result), "fd {} handed out twice", c.result);
            fds.push(c.result);
            if !c.more() {
                armed = false;
                ends += 1;
            }
        }
    }
    assert_eq!(fds.len(), clients.len());
    assert!(ends > 0, "the multishot never ended");
    assert_eq!(net.stats().ended_accepts, ends);
    assert!(clients.iter().all(|&c| net.client_was_accepted(c)));
    assert_eq!(net.open_server_fds(), clients.len());
}

#[test]
fn accept_on_a_closed_listener_fails_with_ebadf() {
    let net = net(2, false);
    let mut ring = net.ring();
    let listener = net.listen();
    ring.push(Op::Close { fd: listener }, CLOSE);
    ring.push(Op::AcceptMulti { listener }, ACCEPT);
    let done = turn(&mut ring);
    let expected = [(CLOSE, 0, 0), (ACCEPT, -libc::EBADF, 0)];
    let got: Vec<_> = done
        .iter()
        .map(|c| (c.user_data, c.result, c.flags))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn recv_delivers_all_bytes_in_order_across_buffers_and_torn_chunks() {
    let net = net(3, true);
    let mut ring = net.ring();
    let (client, fd) = connection(&net, &mut ring);
    let sent = pattern(300_000);
    let mut pieces = sent.chunks(7000);
    let mut received = Vec::new();
    let mut armed = false;
    let mut completions = 0;
    for _ in 0..1000 {
        if let Some(piece) = pieces.next() {
            net.client_write(client, piece);
        } else if received.len() == sent.len() {
            break;
        }
        if !armed {
            ring.push(Op::RecvMulti { fd }, RECV);
            armed = true;
        }
        for c in turn(&mut ring) {
            assert_eq!(c.user_data, RECV);
            assert!(c.result > 0, "unexpected {c:?}");
            assert!(c.result as u32 <= SimConfig::new(0).recv_buffer_bytes);
            let buffer_id = c.buffer_id().expect("data comes in a provided buffer");
            received.extend_from_slice(ring.buffer(buffer_id, c.result as usize));
            ring.recycle(buffer_id);
            completions += 1;
            armed &= c.more();
        }
    }
    assert_eq!(received, sent);
    let stats = net.stats();
    assert!(stats.torn_recvs > 0 && stats.ended_recvs > 0, "{stats:?}");
    assert!(completions > sent.len() / 2048);

    net.client_close(client);
    if !armed {
        ring.push(Op::RecvMulti { fd }, RECV);
    }
    let eof = turn(&mut ring);
    assert_eq!((eof[0].result, eof[0].flags), (0, 0));
}

#[test]
fn recv_fails_with_enobufs_until_buffers_are_recycled() {
    let net = SimNet::new(SimConfig {
        recv_buffers: 4,
        recv_buffer_bytes: 16,
        faults: false,
        ..SimConfig::new(4)
    });
    let mut ring = net.ring();
    let (client, fd) = connection(&net, &mut ring);
    let sent = pattern(100);
    net.client_write(client, &sent);
    ring.push(Op::RecvMulti { fd }, RECV);
    let first = turn(&mut ring);
    assert_eq!(first.len(), 5);
    for (i, c) in first[..4].iter().enumerate() {
        assert_eq!((c.result, c.buffer_id()), (16, Some(i as u16)));
        assert!(c.more());
        assert_eq!(ring.buffer(i as u16, 16), &sent[i * 16..][..16]);
    }
    assert_eq!((first[4].result, first[4].flags), (-libc::ENOBUFS, 0));

    // Re-armed with every buffer still lent out: out of buffers again.
    ring.push(Op::RecvMulti { fd }, RECV);
    assert_eq!(turn(&mut ring)[0].result, -libc::ENOBUFS);
    assert_eq!(net.stats().no_buffers, 2);

    for buffer_id in 0..4 {
        ring.recycle(buffer_id);
    }
    ring.push(Op::RecvMulti { fd }, RECV);
    let rest = turn(&mut ring);
    let lens: Vec<i32> = rest.iter().map(|c| c.result).collect();
    assert_eq!(lens, [16, 16, 4]);
    assert!(rest.iter().all(Completion::more));
    let mut received = Vec::new();
    for c in &rest {
        received.extend_from_slice(ring.buffer(c.buffer_id().unwrap(), c.result as usize));
    }
    assert_eq!(received, sent[64..]);
    assert_eq!(net.ops_in_flight(), 1, "the receive is still armed");
}

#[test]
fn send_respects_the_window_and_resumes_when_the_client_reads() {
    let (net, mut ring, client, fd) = connected(5);
    net.client_set_window(client, 100);
    let bytes = pattern(250);

    ring.push(send(fd, &bytes), SEND);
    let done = turn(&mut ring);
    assert_eq!((done[0].result, done[0].flags), (100, 0));

    // The window is full: the rest waits, and the wait times out.
    ring.push(send(fd, &bytes[100..]), SEND);
    let before = net.now_ms();
    assert!(turn(&mut ring).is_empty());
    assert_eq!(net.now_ms(), before + 10);
    assert_eq!(net.ops_in_flight(), 1);

    assert_eq!(net.client_read(client), bytes[..100]);
    let before = net.now_ms();
    assert_eq!(turn(&mut ring)[0].result, 100);
    assert_eq!(
        net.now_ms(),
        before,
        "no waiting when a completion is ready"
    );

    net.client_set_window(client, 0);
    assert_eq!(net.client_read(client), bytes[100..200]);
    ring.push(send(fd, &bytes[200..]), SEND);
    assert!(turn(&mut ring).is_empty(), "a stopped reader takes nothing");
    net.client_set_window(client, 100);
    assert_eq!(turn(&mut ring)[0].result, 50);
    assert_eq!(net.client_read(client), bytes[200..]);
}

#[test]
fn sends_are_short_or_fail_spuriously_with_faults_on() {
    let net = net(6, true);
    let mut ring = net.ring();
    let (client, fd) = connection(&net, &mut ring);
    net.client_set_window(client, usize::MAX);
    let message = pattern(1000);
    let mut shorts = 0;
    let mut eagains = 0;
    for _ in 0..300 {
        let mut offset = 0;
        while offset < message.len() {
            ring.push(send(fd, &message[offset..]), SEND);
            let done = turn(&mut ring);
            assert_eq!(done.len(), 1);
            match done[0].result {
                n if n == -libc::EAGAIN => eagains += 1,
                n if n > 0 => {
                    shorts += usize::from(offset + (n as usize) < message.len());
                    offset += n as usize;
                }
                n => panic!("send failed: {n}"),
            }
        }
    }
    assert_eq!(net.client_read(client), message.repeat(300));
    let stats = net.stats();
    assert!(shorts > 0 && eagains > 0, "{stats:?}");
    assert_eq!(stats.short_sends, shorts as u64);
    assert_eq!(stats.spurious_eagains, eagains);
}

#[test]
fn vectored_send_gathers_every_iovec() {
    let (net, mut ring, client, fd) = connected(7);
    let (head, tail) = (b"head:".to_vec(), b"tail".to_vec());
    let iov = [
        libc::iovec {
            iov_base: head.as_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        },
        libc::iovec {
            iov_base: tail.as_ptr() as *mut libc::c_void,
            iov_len: tail.len(),
        },
    ];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    ring.push(Op::SendVectored { fd, msg: &msg }, SEND);
    assert_eq!(turn(&mut ring)[0].result, 9);
    assert_eq!(net.client_read(client), b"head:tail");
}

#[test]
fn zero_copy_send_gives_its_result_then_a_later_notification() {
    let net = net(8, true);
    let mut ring = net.ring();
    let (client, fd) = connection(&net, &mut ring);
    net.client_set_window(client, usize::MAX);
    let bytes = pattern(3000);
    let mut eagains = 0;
    for round in 0..50u64 {
        let user_data = SEND + (round << 8);
        let op = Op::SendZeroCopy {
            fd,
            ptr: bytes.as_ptr(),
            len: bytes.len() as u32,
            buf_index: 0,
        };
        ring.push(op, user_data);
        // Each completion with the turn that produced it.
        let mut seen: Vec<(usize, Completion)> = Vec::new();
        let mut turns = 0;
        while seen.last().is_none_or(|(_, c)| c.more()) {
            seen.extend(turn(&mut ring).into_iter().map(|c| (turns, c)));
            turns += 1;
        }
        let [(result_turn, result), (notif_turn, notif)] = seen[..] else {
            panic!("expected a result and a notification, got {seen:?}");
        };
        assert_eq!((result.user_data, notif.user_data), (user_data, user_data));
        assert!(result.more() && !result.notification());
        assert!(notif_turn > result_turn);
        assert_eq!((notif.result, notif.flags), (0, F_NOTIF));
        if result.result == -libc::EAGAIN {
            eagains += 1;
        } else {
            assert!(result.result > 0, "send failed: {result:?}");
            let received = net.client_read(client);
            assert_eq!(received, bytes[..result.result as usize]);
        }
    }
    assert!(eagains < 10);
    assert!(net.stats().lagged_notifs > 0);
}

#[test]
fn zero_copy_notification_comes_a_step_after_the_result() {
    let (net, mut ring, _, fd) = connected(9);
    let bytes = pattern(10);
    let op = Op::SendZeroCopy {
        fd,
        ptr: bytes.as_ptr(),
        len: 10,
        buf_index: 0,
    };
    ring.push(op, SEND);
    let result = turn(&mut ring);
    assert_eq!((result[0].result, result[0].flags), (10, F_MORE));
    assert_eq!(net.ops_in_flight(), 1, "the buffer is still the kernel's");
    assert_eq!(turn(&mut ring)[0].flags, F_NOTIF);
    assert_eq!(net.ops_in_flight(), 0);
}

#[test]
#[should_panic(expected = "changed the buffer before its notification")]
fn zero_copy_buffer_changed_before_the_notification_panics() {
    let (_net, mut ring, _, fd) = connected(10);
    let mut bytes = pattern(10);
    let op = Op::SendZeroCopy {
        fd,
        ptr: bytes.as_ptr(),
        len: 10,
        buf_index: 0,
    };
    ring.push(op, SEND);
    turn(&mut ring);
    bytes[3] ^= 1;
    turn(&mut ring);
}

#[test]
fn reap_reorders_across_operations_but_not_within_one() {
    let net = net(22, true);
    let mut ring = net.ring();
    let connections: Vec<(ClientId, RawFd)> = (0..4).map(|_| connection(&net, &mut ring)).collect();
    let sent = pattern(3000);
    for (i, &(client, fd)) in connections.iter().enumerate() {
        net.client_write(client, &sent);
        ring.push(Op::RecvMulti { fd }, i as u64);
    }
    let before = net.stats().reordered_reaps;
    let done = turn(&mut ring);
    assert_eq!(net.stats().reordered_reaps, before + 1);
    // Each receive's bytes still come in order, and nothing follows its
    // last completion.
    for i in 0..connections.len() as u64 {
        let own: Vec<&Completion> = done.iter().filter(|c| c.user_data == i).collect();
        let (_, before_last) = own.split_last().unwrap();
        assert!(before_last.iter().all(|c| c.more()));
        let mut received = Vec::new();
        for c in own.iter().filter(|c| c.result > 0) {
            let buffer_id = c.buffer_id().unwrap();
            received.extend_from_slice(ring.buffer(buffer_id, c.result as usize));
        }
        assert!(sent.starts_with(&received));
    }
}

#[test]
fn cancel_ends_a_multishot_recv() {
    let net = net(11, true);
    let mut ring = net.ring();
    let (_, fd) = connection(&net, &mut ring);
    ring.push(Op::RecvMulti { fd }, RECV);
    assert!(turn(&mut ring).is_empty());
    ring.push(Op::Cancel { target: RECV }, CANCEL);
    let mut done = turn(&mut ring);
    done.sort_by_key(|c| c.user_data);
    let got: Vec<_> = done
        .iter()
        .map(|c| (c.user_data, c.result, c.flags))
        .collect();
    assert_eq!(got, [(RECV, -libc::ECANCELED, 0), (CANCEL, 0, 0)]);
    assert_eq!(net.ops_in_flight(), 0);

    ring.push(Op::Cancel { target: RECV }, CANCEL);
    assert_eq!(turn(&mut ring)[0].result, -libc::ENOENT);
}

#[test]
fn cancelled_zero_copy_send_still_notifies() {
    let (net, mut ring, client, fd) = connected(12);
    net.client_set_window(client, 0);
    let bytes = pattern(10);
    let op = Op::SendZeroCopy {
        fd,
        ptr: bytes.as_ptr(),
        len: 10,
        buf_index: 0,
    };
    ring.push(op, SEND);
    assert!(turn(&mut ring).is_empty());
    ring.push(Op::Cancel { target: SEND }, CANCEL);
    let done = turn(&mut ring);
    let got: Vec<_> = done
        .iter()
        .map(|c| (c.user_data, c.result, c.flags))
        .collect();
    let expected = [
        (SEND, -libc::ECANCELED, F_MORE),
        (CANCEL, 0, 0),
        (SEND, 0, F_NOTIF),
    ];
    assert_eq!(got, expected);
}

#[test]
fn reset_fails_recv_and_send_with_econnreset_and_drops_unread_bytes() {
    let (net, mut ring, client, fd) = connected(13);
    net.client_set_window(client, 0);
    let bytes = pattern(10);
    ring.push(send(fd, &bytes), SEND);
    assert!(turn(&mut ring).is_empty());

    net.client_write(client, b"never received");
    net.client_reset(client);
    ring.push(Op::RecvMulti { fd }, RECV);
    let mut done = turn(&mut ring);
    done.sort_by_key(|c| c.user_data);
    let got: Vec<_> = done
        .iter()
        .map(|c| (c.user_data, c.result, c.flags))
        .collect();
    assert_eq!(
        got,
        [(RECV, -libc::ECONNRESET, 0), (SEND, -libc::ECONNRESET, 0)]
    );
}

#[test]
fn send_after_the_client_closes_fails_with_epipe() {
    let (net, mut ring, client, fd) = connected(14);
    net.client_close(client);
    ring.push(send(fd, b"late"), SEND);
    assert_eq!(turn(&mut ring)[0].result, -libc::EPIPE);
}

#[test]
fn close_keeps_in_flight_ops_running_and_eof_waits_for_them() {
    let (net, mut ring, client, fd) = connected(15);
    assert_eq!(net.open_server_fds(), 1);
    ring.push(Op::RecvMulti { fd }, RECV);
    ring.push(Op::Close { fd }, CLOSE);
    assert_eq!(turn(&mut ring)[0].result, 0);
    assert_eq!(net.open_server_fds(), 0);
    assert!(
        !net.client_eof(client),
        "the receive still holds the socket"
    );

    // The kernel's file reference keeps the receive working.
    net.client_write(client, b"hi");
    let data = turn(&mut ring);
    assert_eq!((data[0].user_data, data[0].result), (RECV, 2));

    ring.push(Op::Close { fd }, CLOSE);
    ring.push(Op::RecvMulti { fd }, RECV + 1);
    ring.push(Op::Cancel { target: RECV }, CANCEL);
    let mut done = turn(&mut ring);
    done.sort_by_key(|c| c.user_data);
    let got: Vec<_> = done.iter().map(|c| (c.user_data, c.result)).collect();
    let expected = [
        (RECV, -libc::ECANCELED),
        (RECV + 1, -libc::EBADF),
        (CANCEL, 0),
        (CLOSE, -libc::EBADF),
    ];
    assert_eq!(got, expected);
    assert!(net.client_eof(client));
}

#[test]
fn wake_posts_on_the_target_ring_only() {
    let net = net(16, true);
    let mut sender = net.ring();
    let mut target = net.ring();
    sender.push(
        Op::Wake {
            ring_fd: target.fd(),
            user_data: 77,
        },
        CLOSE,
    );
    assert!(
        turn(&mut sender).is_empty(),
        "success is skipped for the sender"
    );
    let before = net.now_ms();
    let woken = turn(&mut target);
    let expected = Completion {
        user_data: 77,
        result: 0,
        flags: 0,
    };
    assert_eq!(woken, [expected]);
    assert!(net.now_ms() <= before + 1, "a woken ring does not wait");

    let gone = target.fd();
    drop(target);
    sender.push(
        Op::Wake {
            ring_fd: gone,
            user_data: 77,
        },
        CLOSE,
    );
    let failed = turn(&mut sender);
    assert_eq!(
        (failed[0].user_data, failed[0].result),
        (CLOSE, -libc::EBADF)
    );
}

#[test]
fn idle_wait_advances_the_clock_by_the_timeout() {
    let net = net(17, true);
    let mut ring = net.ring();
    let wall = ring.wall_ns();
    ring.submit_and_wait(250).unwrap();
    assert_eq!(ring.now_ms(), 250);
    assert_eq!(ring.wall_ns(), wall + 250_000_000);
    net.advance_ms(50);
    assert_eq!(ring.now_ms(), 300);
}

/// A busy little world: clients talking and being talked to, faults on.
fn scenario(seed: u64) -> (Vec<Completion>, Vec<u8>) {
    let net = net(seed, true);
    let mut ring = net.ring();
    let listener = net.listen();
    let clients: Vec<ClientId> = (0..4).map(|_| net.connect(listener)).collect();
    let reply = pattern(5000);
    let mut log = Vec::new();
    let mut fds = Vec::new();
    let mut accept_armed = false;
    let mut recv_armed = [false; 4];
    let mut send_armed = [false; 4];
    for step in 0..60 {
        if !accept_armed && fds.len() < clients.len() {
            ring.push(Op::AcceptMulti { listener }, ACCEPT);
            accept_armed = true;
        }
        for (i, &fd) in fds.iter().enumerate() {
            net.client_write(clients[i], &reply[..(step * 37 + i) % 900 + 1]);
            if !recv_armed[i] {
                ring.push(Op::RecvMulti { fd }, RECV << 8 | i as u64);
                recv_armed[i] = true;
            }
            if !send_armed[i] {
                ring.push(send(fd, &reply), SEND << 8 | i as u64);
                send_armed[i] = true;
            }
        }
        for c in turn(&mut ring) {
            log.push(c);
            let i = (c.user_data & 0xff) as usize;
            match c.user_data >> 8 {
                0 => {
                    fds.push(c.result);
                    accept_armed = c.more();
                }
                RECV => {
                    if let Some(buffer_id) = c.buffer_id() {
                        ring.recycle(buffer_id);
                    }
                    recv_armed[i] = c.more();
                }
                _ => send_armed[i] = false,
            }
        }
    }
    let read = clients.iter().flat_map(|&c| net.client_read(c)).collect();
    (log, read)
}

#[test]
fn same_seed_replays_identically_and_seeds_differ() {
    let first = scenario(42);
    assert!(first.0.len() > 100, "the scenario should be busy");
    assert_eq!(first, scenario(42));
    assert_ne!(first.0, scenario(43).0);
}

#[test]
#[should_panic(expected = "reuses user_data")]
fn reusing_an_in_flight_user_data_panics() {
    let (_net, mut ring, _, fd) = connected(18);
    ring.push(Op::RecvMulti { fd }, RECV);
    turn(&mut ring);
    ring.push(Op::RecvMulti { fd }, RECV);
}

#[test]
#[should_panic(expected = "recycled twice?")]
fn recycling_a_buffer_twice_panics() {
    let (net, mut ring, client, fd) = connected(19);
    net.client_write(client, b"x");
    ring.push(Op::RecvMulti { fd }, RECV);
    let buffer_id = turn(&mut ring)[0].buffer_id().unwrap();
    ring.recycle(buffer_id);
    ring.recycle(buffer_id);
}

#[test]
#[should_panic(expected = "zero-length")]
fn zero_length_send_panics() {
    let (_net, mut ring, _, fd) = connected(20);
    ring.push(send(fd, b""), SEND);
}

#[test]
#[should_panic(expected = "never opened")]
fn op_on_a_never_opened_fd_panics() {
    let net = net(21, false);
    let mut ring = net.ring();
    ring.push(Op::RecvMulti { fd: 3 }, RECV);
}
