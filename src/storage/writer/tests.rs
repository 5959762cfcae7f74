//! The writer's tests, over a fresh data directory each: what a failed
//! batch leaves behind and what the shards are told about it.

use super::*;
use crate::storage::{links, Notice, ReadStatus, StorageLink, APPEND, CLOSE, POSITION, RESUME};
use cluecast_proto::{Event, Position};

fn event(topic: &[u8], epoch: u64, seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    Frame::Event(Event {
        seq,
        epoch,
        publish_ts_ns: seq,
        topic,
        payload: b"clue",
    })
    .encode(&mut out);
    out
}

/// The DURABLE, FAILED and PATHS notices the writer sent: (kind, through).
fn notices(link: &StorageLink) -> Vec<(u8, u64)> {
    let mut out = Vec::new();
    while let Some((kind, body)) = link.notice_rx.peek() {
        match Notice::decode(kind, body) {
            Notice::Durable { through }
            | Notice::Failed { through, .. }
            | Notice::Paths { through } => out.push((kind, through)),
            Notice::Floor { .. } => {}
        }
        link.notice_rx.pop();
    }
    out
}

/// A sync writer for one shard, no retention, over a fresh data
/// directory named after `test` (removed by `TestWriter::finish`).
struct TestWriter {
    dir: std::path::PathBuf,
    db: Arc<Db>,
    link: StorageLink,
    writer: Writer,
    _readers: Vec<crate::storage::ReaderPort>,
}

impl TestWriter {
    fn new(test: &str) -> TestWriter {
        let dir = std::env::temp_dir().join(format!("cluecast-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = Arc::new(Db::open(&dir, Durability::Sync, 1).unwrap().db);
        let doorbell = Doorbell::new().unwrap();
        // No shard ring to wake (-1): the wake-ups fail, and nobody minds.
        let (links, writers, readers) =
            links(1, Durability::Sync, 1 << 20, &[-1], doorbell.fd(), -1);
        let no_retention = Retention {
            events_max: 0,
            age_ms: 0,
        };
        let writer = Writer::new(
            db.clone(),
            Durability::Sync,
            Limits::DEFAULT,
            writers,
            std::iter::empty(),
            no_retention,
            doorbell,
        );
        let link = links.into_iter().next().expect("one link");
        TestWriter {
            dir,
            db,
            link,
            writer,
            _readers: readers,
        }
    }

    fn finish(self) {
        let TestWriter {
            dir, db, writer, ..
        } = self;
        drop(writer);
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A close and the next history's first event in one batch: if the
/// batch fails, the writer's rows and the disk are as before it; sent
/// again, the old history is gone and the new one stands under a new id.
#[test]
fn a_close_in_a_failed_batch_changes_nothing_and_succeeds_when_sent_again() {
    let mut t = TestWriter::new("writer-close");
    let (db, link, writer) = (t.db.clone(), &t.link, &mut t.writer);
    let append = |kind: u8, body: &[u8]| assert!(link.append_tx.push(kind, &[body]));

    for seq in 1..=3 {
        append(APPEND, &event(b"hunt", 11, seq));
    }
    assert!(writer.round());
    assert_eq!(notices(link), [(DURABLE, 3)]);
    let first = db.topic(b"hunt").unwrap().expect("stored");
    assert_eq!((first.epoch, first.last_seq), (11, 3));

    // One more event, the close, the new history's first event: failed.
    let tail = [
        (APPEND, event(b"hunt", 11, 4)),
        (CLOSE, b"hunt".to_vec()),
        (APPEND, event(b"hunt", 22, 1)),
    ];
    for (kind, body) in &tail {
        append(*kind, body);
    }
    db.fail_commits(1);
    assert!(writer.round());
    assert_eq!(notices(link), [(FAILED, 6)]);
    assert_eq!(db.topic(b"hunt").unwrap(), Some(first));
    assert_eq!(writer.topics[&b"hunt"[..]].row, first);

    // The shard starts anew and hands over the same again.
    append(RESUME, &[]);
    for (kind, body) in &tail {
        append(*kind, body);
    }
    assert!(writer.round());
    assert_eq!(notices(link), [(DURABLE, 9)]);
    let second = db.topic(b"hunt").unwrap().expect("the new history");
    assert_ne!(second.id, first.id);
    assert_eq!((second.epoch, second.last_seq), (22, 1));
    assert_eq!(writer.topics[&b"hunt"[..]].row, second);
    assert_eq!(
        db.oldest_seq(first.id).unwrap(),
        0,
        "the old history is gone"
    );
    let mut out = Vec::new();
    let found = db.read_events(second, b"hunt", 1, 1, usize::MAX, &mut out);
    assert_eq!(found.unwrap().0, ReadStatus::Found);
    assert_eq!(out, event(b"hunt", 22, 1));
    drop(db);
    t.finish();
}

/// Positions are told written (PATHS) once a batch wrote them; a batch
/// of positions alone that fails is told as FAILED, never as PATHS, so
/// the shard's waiting path reads are answered, not held.
#[test]
fn positions_are_told_written_or_failed() {
    let mut t = TestWriter::new("writer-paths");
    let (db, link, writer) = (t.db.clone(), &t.link, &mut t.writer);
    let position = |ts_ms: u64| {
        let fix = Position {
            lat_e7: 1,
            lon_e7: 2,
            accuracy_cm: 3,
            client_ts_ms: ts_ms,
        };
        let body = [&[6][..], b"walker", &fix.to_bytes()].concat();
        assert!(link.append_tx.push(POSITION, &[&body]));
    };

    position(1);
    position(2);
    assert!(writer.round());
    writer.send_owed_notices();
    assert_eq!(notices(link), [(PATHS, 2)]);

    position(3);
    db.fail_commits(1);
    assert!(writer.round());
    writer.send_owed_notices();
    assert_eq!(notices(link), [(FAILED, 0)]);

    // The shard starts anew; the next batch writes the kept position too.
    assert!(link.append_tx.push(RESUME, &[]));
    position(4);
    assert!(writer.round());
    writer.send_owed_notices();
    assert_eq!(notices(link), [(PATHS, 4)]);
    drop(db);
    t.finish();
}
