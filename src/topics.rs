//! Topics as one shard sees them: the sequence counter (authoritative on the
//! topic's owner shard, a mirror elsewhere), the in-memory history of shared
//! frames, and the local subscriber list that fan-out walks.
//!
//! Every shard receives every event of every topic from the owner, in order,
//! so every shard's history is a complete recent window and resume is served
//! locally, without asking another shard.

use std::collections::{HashMap, VecDeque};

use slab::Slab;

use crate::arena::{Arena, FrameRef};
use crate::storage::StoredTopic;

/// A topic whose metrics class is not looked up yet.
pub const UNCLASSIFIED: u8 = u8::MAX;

/// One local subscriber of a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscriber {
    pub conn: u32,
    /// The next sequence this subscriber is to get.
    pub next_seq: u64,
    /// True while the subscriber is fed from history (after a resume, or when
    /// its queue was full): live fan-out skips it until it is caught up.
    pub catching_up: bool,
    /// A read of its history from disk is in flight.
    pub reading: bool,
}

pub struct Topic {
    pub name: Box<[u8]>,
    /// The epoch of its history; 0 until the owner sequences its first
    /// event (every shard takes the epoch from that event).
    pub epoch: u64,
    /// Newest sequence in history (delivered); 0 before the first.
    pub last_seq: u64,
    /// Newest sequence given out: on the owner, ahead of `last_seq` by the
    /// events waiting for their WAL sync; elsewhere equal to it.
    pub assigned_seq: u64,
    /// Oldest sequence in the durable log; 0 when nothing is stored (or
    /// history is in memory only).
    pub stored_oldest_seq: u64,
    /// History frames, oldest first; `history[i]` has sequence
    /// `last_seq - history.len() + 1 + i`.
    history: VecDeque<FrameRef>,
    history_bytes: usize,
    pub subscribers: Vec<Subscriber>,
    /// Counted against this shard's budget of topics it sequences.
    pub sequenced_here: bool,
    /// On the owner: a close waits for its deletion to be durable, and
    /// publishes are refused meanwhile.
    pub closing: bool,
    /// Its class among the shard's metrics (`UNCLASSIFIED` until
    /// first counted).
    pub class: u8,
}

#[derive(Clone, Copy, Debug)]
pub struct TopicLimits {
    /// Topics with events, across all shards (every shard mirrors them all).
    pub topics_max: usize,
    /// Topics this shard may sequence: its share of `topics_max`, so the
    /// owners' shares never add up to more than every table holds.
    pub sequenced_max: usize,
    /// Topics subscribed to but without events yet; kept apart so clients
    /// subscribing to made-up names cannot crowd out real topics.
    pub waiting_max: usize,
    pub history_events_max: usize,
    pub history_bytes_max: usize,
}

pub struct Topics {
    by_name: HashMap<Box<[u8]>, u32>,
    topics: Slab<Topic>,
    sequenced: usize,
    /// Topics without any event yet.
    waiting: usize,
    /// Frames held by all histories.
    history_frames: usize,
    /// Where eviction for memory takes its next frame.
    evict_cursor: usize,
    limits: TopicLimits,
}

/// Why a topic is looked up: subscribing may only create a waiting topic;
/// an event always finds room (see `TopicLimits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Subscribe,
    Event,
}

impl Topic {
    /// The oldest sequence still in history (`last_seq + 1` when empty).
    pub fn oldest_seq(&self) -> u64 {
        self.last_seq + 1 - self.history.len() as u64
    }

    /// The oldest sequence still retained, in memory or on disk
    /// (`last_seq + 1` when none is).
    pub fn oldest_retained_seq(&self) -> u64 {
        match self.stored_oldest_seq {
            0 => self.oldest_seq(),
            stored => stored.min(self.oldest_seq()),
        }
    }

    /// Whether `seq` is no longer in memory but still in the durable log.
    pub fn on_disk_only(&self, seq: u64) -> bool {
        self.stored_oldest_seq != 0 && seq >= self.stored_oldest_seq && seq < self.oldest_seq()
    }

    /// The history frame of `seq`, if retained.
    pub fn history_frame(&self, seq: u64) -> Option<FrameRef> {
        if seq < self.oldest_seq() || seq > self.last_seq {
            return None;
        }
        self.history
            .get((seq - self.oldest_seq()) as usize)
            .copied()
    }

    pub fn history_len(&self) -> usize {
        self.history.len()
    }
}

impl Topics {
    pub fn new(limits: TopicLimits) -> Topics {
        assert!(limits.sequenced_max <= limits.topics_max);
        let capacity = limits.topics_max + limits.waiting_max;
        Topics {
            by_name: HashMap::with_capacity(capacity),
            topics: Slab::with_capacity(capacity),
            sequenced: 0,
            waiting: 0,
            history_frames: 0,
            evict_cursor: 0,
            limits,
        }
    }

    /// Topics in the table (with events, or only subscribed to).
    pub fn count(&self) -> usize {
        self.topics.len()
    }

    pub fn get(&self, index: u32) -> &Topic {
        &self.topics[index as usize]
    }

    pub fn get_mut(&mut self, index: u32) -> &mut Topic {
        &mut self.topics[index as usize]
    }

    pub fn find(&self, name: &[u8]) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// The topic's index, creating it (empty, no epoch yet) if it is new;
    /// None when the table has no room for it.
    pub fn find_or_create(&mut self, name: &[u8], purpose: Purpose) -> Option<u32> {
        if let Some(index) = self.find(name) {
            return Some(index);
        }
        if purpose == Purpose::Subscribe && self.waiting >= self.limits.waiting_max {
            return None;
        }
        assert!(
            self.topics.len() < self.limits.topics_max + self.limits.waiting_max,
            "topic table overflow: owners sequenced more topics than the limit"
        );
        self.waiting += 1;
        let index = self.topics.insert(Topic {
            name: name.into(),
            epoch: 0,
            last_seq: 0,
            assigned_seq: 0,
            stored_oldest_seq: 0,
            history: VecDeque::new(),
            history_bytes: 0,
            subscribers: Vec::new(),
            sequenced_here: false,
            closing: false,
            class: UNCLASSIFIED,
        }) as u32;
        self.by_name.insert(name.into(), index);
        Some(index)
    }

    /// Adds a topic recovered from the durable log (empty history; older
    /// events are read from disk). Its owner claims it even past its share
    /// of `topics_max`: the topic exists whatever the hash spread.
    pub fn restore(&mut self, stored: &StoredTopic, owned_here: bool) {
        assert!(self.find(&stored.name).is_none(), "a topic is stored once");
        assert!(
            self.topics.len() < self.limits.topics_max,
            "the engine checks stored topics against the limit"
        );
        let index = self.topics.insert(Topic {
            name: stored.name.clone(),
            epoch: stored.epoch,
            last_seq: stored.last_seq,
            assigned_seq: stored.last_seq,
            stored_oldest_seq: stored.oldest_seq,
            history: VecDeque::new(),
            history_bytes: 0,
            subscribers: Vec::new(),
            sequenced_here: owned_here,
            closing: false,
            class: UNCLASSIFIED,
        }) as u32;
        self.by_name.insert(stored.name.clone(), index);
        if owned_here {
            self.sequenced += 1;
        }
    }

    /// Forgets a topic that never had an event once nobody subscribes to it.
    pub fn remove_if_unused(&mut self, index: u32) {
        let topic = &self.topics[index as usize];
        if topic.assigned_seq == 0 && topic.subscribers.is_empty() && !topic.sequenced_here {
            let topic = self.topics.remove(index as usize);
            self.by_name.remove(&topic.name);
            self.waiting -= 1;
        }
    }

    /// Forgets a closed topic and frees its history. Its subscribers must be
    /// gone already.
    pub fn remove(&mut self, index: u32, arena: &mut Arena) {
        let topic = &mut self.topics[index as usize];
        assert!(
            topic.subscribers.is_empty(),
            "a closed topic keeps subscribers"
        );
        while Self::evict_oldest(topic, arena) {
            self.history_frames -= 1;
        }
        let topic = self.topics.remove(index as usize);
        self.by_name.remove(&topic.name);
        if topic.sequenced_here {
            self.sequenced -= 1;
        } else if topic.last_seq == 0 {
            self.waiting -= 1;
        }
    }

    /// Claims a slot of this shard's sequencing budget for the topic; false
    /// when the budget is spent.
    pub fn claim_sequencing(&mut self, index: u32) -> bool {
        let topic = &mut self.topics[index as usize];
        if topic.sequenced_here {
            return true;
        }
        if self.sequenced >= self.limits.sequenced_max {
            return false;
        }
        if topic.last_seq == 0 {
            self.waiting -= 1;
        }
        topic.sequenced_here = true;
        self.sequenced += 1;
        true
    }

    /// Appends the frame of sequence `seq` (taking over the caller's
    /// reference) and evicts what the history limits no longer allow.
    pub fn append(&mut self, index: u32, seq: u64, frame: FrameRef, arena: &mut Arena) {
        let limits = self.limits;
        let topic = &mut self.topics[index as usize];
        assert_eq!(
            seq,
            topic.last_seq + 1,
            "events reach a shard in sequence order"
        );
        if topic.last_seq == 0 && !topic.sequenced_here {
            self.waiting -= 1;
        }
        topic.last_seq = seq;
        topic.assigned_seq = topic.assigned_seq.max(seq);
        topic.history.push_back(frame);
        topic.history_bytes += arena.len(frame);
        self.history_frames += 1;
        while topic.history.len() > limits.history_events_max
            || (topic.history_bytes > limits.history_bytes_max && topic.history.len() > 1)
        {
            Self::evict_oldest(topic, arena);
            self.history_frames -= 1;
        }
    }

    fn evict_oldest(topic: &mut Topic, arena: &mut Arena) -> bool {
        let Some(frame) = topic.history.pop_front() else {
            return false;
        };
        topic.history_bytes -= arena.len(frame);
        arena.release(frame);
        true
    }

    /// Frees arena memory by dropping one history frame: the oldest of the
    /// next topic in turn that has any, so every topic gives up its oldest
    /// events alike. False when every history is empty.
    pub fn evict_for_memory(&mut self, arena: &mut Arena) -> bool {
        if self.history_frames == 0 {
            return false;
        }
        let slots = self.topics.capacity();
        for _ in 0..slots {
            self.evict_cursor = (self.evict_cursor + 1) % slots;
            if let Some(topic) = self.topics.get_mut(self.evict_cursor) {
                if Self::evict_oldest(topic, arena) {
                    self.history_frames -= 1;
                    return true;
                }
            }
        }
        unreachable!("history_frames counts a frame no topic holds");
    }

    /// Frames held by all histories.
    pub fn history_frames(&self) -> usize {
        self.history_frames
    }

    /// Releases every history frame (shutdown).
    pub fn clear_history(&mut self, arena: &mut Arena) {
        for (_, topic) in &mut self.topics {
            while Self::evict_oldest(topic, arena) {}
        }
        self.history_frames = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::Use;
    use cluecast_sys::{PageKind, Region};

    fn setup(events_max: usize, bytes_max: usize) -> (Region, Arena, Topics) {
        let region = Region::map(1 << 20, PageKind::Transparent, None).unwrap();
        let arena = Arena::new(region.spans(1).pop().unwrap(), 0, 4096);
        let topics = Topics::new(TopicLimits {
            topics_max: 4,
            sequenced_max: 2,
            waiting_max: 2,
            history_events_max: events_max,
            history_bytes_max: bytes_max,
        });
        (region, arena, topics)
    }

    #[test]
    fn history_is_bounded_in_events_and_bytes() {
        let (_region, mut arena, mut topics) = setup(3, 250);
        let t = topics.find_or_create(b"hunt-1", Purpose::Event).unwrap();
        for seq in 1..=5 {
            let f = arena.alloc(100, Use::Event).unwrap();
            topics.append(t, seq, f, &mut arena);
        }
        let topic = topics.get(t);
        assert_eq!(topic.last_seq, 5);
        assert_eq!(topic.history_len(), 2, "250 bytes hold two 100-byte frames");
        assert_eq!(topic.oldest_seq(), 4);
        assert!(topic.history_frame(3).is_none());
        assert!(topic.history_frame(4).is_some());
        assert!(topic.history_frame(6).is_none());
        assert_eq!(arena.frames_live(), 2);
        topics.clear_history(&mut arena);
        assert_eq!(arena.frames_live(), 0);
    }

    #[test]
    fn waiting_topics_are_bounded_apart_and_forgotten_when_unused() {
        let (_region, mut arena, mut topics) = setup(3, 1000);
        let a = topics.find_or_create(b"a", Purpose::Subscribe).unwrap();
        assert_eq!(topics.find_or_create(b"a", Purpose::Subscribe), Some(a));
        topics.find_or_create(b"b", Purpose::Subscribe).unwrap();
        assert_eq!(topics.find_or_create(b"c", Purpose::Subscribe), None);
        // Real topics still find room.
        let d = topics.find_or_create(b"d", Purpose::Event).unwrap();
        let f = arena.alloc(10, Use::Event).unwrap();
        topics.append(d, 1, f, &mut arena);
        // An event turns a waiting topic into a real one, freeing its place.
        let f = arena.alloc(10, Use::Event).unwrap();
        topics.append(a, 1, f, &mut arena);
        assert!(topics.find_or_create(b"c", Purpose::Subscribe).is_some());
        let b = topics.find(b"b").unwrap();
        topics.remove_if_unused(b);
        assert_eq!(topics.find(b"b"), None);
        topics.remove_if_unused(a);
        assert_eq!(topics.find(b"a"), Some(a), "a topic with events stays");
        topics.clear_history(&mut arena);
    }

    #[test]
    fn a_removed_topic_frees_its_history_and_its_place() {
        let (_region, mut arena, mut topics) = setup(10, 10_000);
        // Sequenced here, with history; and one waiting for its first event.
        let a = topics.find_or_create(b"a", Purpose::Event).unwrap();
        assert!(topics.claim_sequencing(a));
        for seq in 1..=3 {
            let f = arena.alloc(10, Use::Event).unwrap();
            topics.append(a, seq, f, &mut arena);
        }
        let w = topics.find_or_create(b"w", Purpose::Subscribe).unwrap();
        topics.find_or_create(b"x", Purpose::Subscribe).unwrap();
        assert_eq!(topics.find_or_create(b"y", Purpose::Subscribe), None);
        topics.remove(a, &mut arena);
        topics.remove(w, &mut arena);
        assert_eq!((topics.find(b"a"), topics.find(b"w")), (None, None));
        assert_eq!((topics.history_frames(), arena.frames_live()), (0, 0));
        // Both budgets have room again.
        assert!(topics.find_or_create(b"y", Purpose::Subscribe).is_some());
        let b = topics.find_or_create(b"b", Purpose::Event).unwrap();
        let c = topics.find_or_create(b"c", Purpose::Event).unwrap();
        assert!(topics.claim_sequencing(b) && topics.claim_sequencing(c));
        // A name comes back as a new, empty topic.
        let a = topics.find_or_create(b"a", Purpose::Event).unwrap();
        assert_eq!((topics.get(a).last_seq, topics.get(a).epoch), (0, 0));
    }

    #[test]
    fn sequencing_budget_is_bounded() {
        let (_region, _arena, mut topics) = setup(3, 1000);
        for name in [&b"a"[..], b"b", b"c"] {
            topics.find_or_create(name, Purpose::Event).unwrap();
        }
        assert!(topics.claim_sequencing(0));
        assert!(topics.claim_sequencing(0), "claiming twice costs nothing");
        assert!(topics.claim_sequencing(1));
        assert!(!topics.claim_sequencing(2));
    }

    #[test]
    fn memory_eviction_takes_turns_among_topics_and_stops_when_all_are_empty() {
        let (_region, mut arena, mut topics) = setup(10, 10_000);
        let a = topics.find_or_create(b"a", Purpose::Event).unwrap();
        let b = topics.find_or_create(b"b", Purpose::Event).unwrap();
        for seq in 1..=3 {
            let f = arena.alloc(10, Use::Event).unwrap();
            topics.append(a, seq, f, &mut arena);
        }
        let f = arena.alloc(10, Use::Event).unwrap();
        topics.append(b, 1, f, &mut arena);
        assert_eq!(topics.history_frames(), 4);
        assert!(topics.evict_for_memory(&mut arena));
        assert!(topics.evict_for_memory(&mut arena));
        assert_eq!(
            topics.get(a).oldest_seq(),
            2,
            "each topic gave up its oldest"
        );
        assert_eq!(topics.get(b).oldest_seq(), 2);
        assert!(topics.evict_for_memory(&mut arena));
        assert!(topics.evict_for_memory(&mut arena));
        assert!(!topics.evict_for_memory(&mut arena));
        assert_eq!((topics.history_frames(), arena.frames_live()), (0, 0));
    }
}
