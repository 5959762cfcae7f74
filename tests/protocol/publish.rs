//! Sections 3.6 to 3.10, 5 and 8: PUBLISH and its ack, the EVENT a
//! subscriber gets, the topic table's limit, and closing a topic.

use super::*;

#[test]
fn publish_acks_and_events_carry_what_sections_3_7_and_3_8_say() {
    // --durability sync, the default: every ack says durable.
    let server = start(&[]);
    let topic = b"hunt-5.clues";
    let mut subscriber = open(server.addr);
    subscribed(&mut subscriber, &live(topic));
    let mut publisher = open(server.addr);
    let sent = [(0, b"first".as_slice()), (u32::MAX, b"second"), (7, b"")];
    let before_ns = now_ns();
    let acks: Vec<PublishAck> = sent
        .iter()
        .map(|&(request_id, payload)| ack(&mut publisher, request_id, topic, payload))
        .collect();
    let after_ns = now_ns();
    let epoch = acks[0].epoch;
    assert_ne!(epoch, 0);
    for ((&(request_id, payload), ack), seq) in sent.iter().zip(&acks).zip(1..) {
        let want = PublishAck {
            request_id,
            status: 0,
            flags: ACK_FLAG_DURABLE,
            epoch,
            seq,
        };
        assert_eq!(*ack, want);
        match next(&mut subscriber) {
            Got::Event {
                seq: got_seq,
                epoch: got_epoch,
                publish_ts_ns,
                topic: got_topic,
                payload: got_payload,
            } => {
                assert_eq!((got_seq, got_epoch), (seq, epoch));
                assert_eq!((&got_topic[..], &got_payload[..]), (&topic[..], payload));
                // The server's wall clock when it sequenced the event.
                let slack = 1_000_000_000;
                assert!(
                    (before_ns - slack..=after_ns + slack).contains(&publish_ts_ns),
                    "publish_ts_ns {publish_ts_ns} is not within a second of \
                     {before_ns}..={after_ns}"
                );
            }
            other => panic!("expected EVENT {seq}, got {other:?}"),
        }
    }

    // A payload of payload_bytes_max on a topic of topic_bytes_max.
    let long_topic = vec![b'L'; 64];
    let payload: Vec<u8> = (0..65_536u32).map(|i| i as u8).collect();
    let mut big = open(server.addr);
    subscribed(&mut big, &live(&long_topic));
    let a = ack(&mut publisher, 8, &long_topic, &payload);
    assert_eq!((a.status, a.seq), (0, 1));
    let (seq, got_epoch, got) = next(&mut big).event();
    assert_eq!((seq, got_epoch), (1, a.epoch));
    assert!(got == payload, "the payload arrives as published");
    for c in [&mut subscriber, &mut publisher, &mut big] {
        assert_open(c);
    }
}

#[test]
fn topics_past_topics_max_are_refused_and_the_connection_stays() {
    let server = start(&["--topics-max", "2", "--durability", "memory"]);
    let mut publisher = open(server.addr);
    published(&mut publisher, b"t1", b"x");
    published(&mut publisher, b"t2", b"x");
    let refused = PublishAck {
        request_id: 3,
        status: ErrorCode::Overloaded as u16,
        flags: 0,
        epoch: 0,
        seq: 0,
    };
    assert_eq!(ack(&mut publisher, 3, b"t3", b"x"), refused);
    assert_open(&mut publisher);
    assert_eq!(published(&mut publisher, b"t1", b"y").1, 2);

    // Sections 4 and 11: topics without events have topics_max places of
    // their own (one shard); past them SUBSCRIBE gets ERROR Overloaded.
    let mut subscriber = open(server.addr);
    for topic in [b"w1", b"w2"] {
        let (status, ..) = subscribed(&mut subscriber, &live(topic));
        assert_eq!(status, SubscribeStatus::Ok);
    }
    subscriber.send_raw(&live(b"w3")).unwrap();
    expect_error(&mut subscriber, ErrorCode::Overloaded);
}

#[test]
fn topic_close_ends_every_subscription_and_the_history() {
    let server = start(&[]);
    let topic = b"hunt-8";
    let mut subscriber = open(server.addr);
    subscribed(&mut subscriber, &live(topic));
    // The closer is subscribed too, and writes three PUBLISHes and the
    // TOPIC_CLOSE at once: the close comes after all three (section 8).
    let mut closer = open(server.addr);
    subscribed(&mut closer, &live(topic));
    let mut requests: Vec<u8> = (1..=3).flat_map(|i| publish(i, topic, b"clue")).collect();
    requests.extend(topic_close(9, topic));
    closer.send_raw(&requests).unwrap();

    let closed = |request_id, last_seq| Got::TopicClosed {
        request_id,
        status: 0,
        last_seq,
        topic: topic.to_vec(),
    };
    let (mut events, mut acks, mut answers) = (vec![], vec![], vec![]);
    while answers.len() < 2 {
        match next(&mut closer) {
            Got::Event { seq, .. } => {
                assert!(
                    !answers.contains(&closed(0, 3)),
                    "EVENT {seq} after the notice"
                );
                events.push(seq);
            }
            Got::Ack(a) => acks.push(a),
            got @ Got::TopicClosed { .. } => answers.push(got),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(events, [1, 2, 3]);
    assert_eq!(
        acks.iter().map(|a| (a.status, a.seq)).collect::<Vec<_>>(),
        [(0, 1), (0, 2), (0, 3)]
    );
    assert!(answers.contains(&closed(0, 3)), "the notice: {answers:?}");
    assert!(answers.contains(&closed(9, 3)), "the answer: {answers:?}");
    assert_eq!(seqs(&mut subscriber, 3), [1, 2, 3]);
    assert_eq!(next(&mut subscriber), closed(0, 3));

    // A new history: a new epoch, sequences from 1, and no subscription left.
    let old_epoch = acks[0].epoch;
    let mut publisher = open(server.addr);
    let (epoch, seq) = published(&mut publisher, topic, b"after");
    assert_eq!(seq, 1);
    assert_ne!(epoch, old_epoch);
    assert_open(&mut subscriber);
    assert_open(&mut closer);
    let mut back = open(server.addr);
    let answer = subscribed(&mut back, &resume(old_epoch, 3, topic));
    assert_eq!(answer, (SubscribeStatus::EpochChanged, epoch, 1, 1));
    assert_eq!(next(&mut back).event(), (1, epoch, b"after".to_vec()));

    // request_id 0 is carried out, and answered with 0: one frame, which
    // looks like the notice.
    publisher.send_raw(&topic_close(0, topic)).unwrap();
    assert_eq!(next(&mut publisher), closed(0, 1));
    assert_open(&mut publisher);
    assert_eq!(next(&mut back), closed(0, 1));
    assert_eq!(published(&mut publisher, topic, b"again").1, 1);
}
