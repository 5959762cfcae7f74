//! The frame arena: every byte a shard sends comes from here. A frame is
//! encoded once, then shared by reference count between the topic history and
//! every connection queue that holds it; the kernel reads it in place (the
//! arena is registered as a fixed buffer for zero-copy sends).
//!
//! Memory is one span of a region mapped at start-up, cut into equal pages.
//! A page serves one size class at a time (128 B, 512 B, 2 KiB, ... up to the
//! largest frame) and goes back to the common pool when it empties, so the
//! arena follows the workload: all small events, all large, or a mix. Nothing
//! is allocated after start-up: when no page is left `alloc` says so and the
//! caller evicts history or pushes back. The last few pages are kept for
//! control frames (acks, pongs, GOAWAY), so a full arena refuses events but
//! can still answer.

use cluecast_sys::Span;

/// A frame in the arena: its page and slot, as `page * slots_per_page_max + slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameRef(u32);

/// What a frame is for, which decides whether it may take reserved pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Events: refused when only the reserve is left.
    Event,
    /// Answers to a client (acks, pongs, SUBSCRIBED, ERROR, GOAWAY).
    Control,
}

const SMALLEST_SLOT_BYTES: usize = 128;
const SLOT_ALIGN: usize = 64;
const PAGE_BYTES_MIN: usize = 128 << 10;
const NIL: u32 = u32::MAX;

struct Class {
    slot_bytes: usize,
    slots_per_page: usize,
    /// Pages of this class with a free slot.
    partial: Vec<u32>,
}

struct Page {
    /// Index into `classes`, or None while in the pool.
    class: Option<u8>,
    used: u32,
    free: Vec<u16>,
    /// Position in its class's `partial`, or NIL.
    partial_at: u32,
}

pub struct Arena {
    span: Span,
    /// Index of this span in the rings' fixed-buffer table.
    buf_index: u16,
    page_bytes: usize,
    slots_per_page_max: usize,
    classes: Vec<Class>,
    pages: Vec<Page>,
    free_pages: Vec<u32>,
    /// Pages only control frames may take.
    reserve_pages: usize,
    refs: Vec<u32>,
    lens: Vec<u32>,
    frames_live: usize,
}

impl Arena {
    /// The page size for a frame limit: room for at least three of the
    /// largest frames (so they waste at most a quarter of a page), and never
    /// under 128 KiB.
    pub fn page_bytes_for(frame_bytes_max: usize) -> usize {
        (frame_bytes_max * 4 / 3)
            .next_power_of_two()
            .max(PAGE_BYTES_MIN)
    }

    /// Cuts `span` into pages and size classes of 128 B, 512 B, 2 KiB, ... up
    /// to the first class that holds `frame_bytes_max`.
    pub fn new(span: Span, buf_index: u16, frame_bytes_max: usize) -> Arena {
        let page_bytes = Self::page_bytes_for(frame_bytes_max);
        let slots_per_page_max = page_bytes / SMALLEST_SLOT_BYTES;
        assert!(
            slots_per_page_max <= u16::MAX as usize + 1,
            "pages too large"
        );
        let page_count = span.len() / page_bytes;
        assert!(
            page_count >= 8,
            "an arena of {} bytes holds fewer than 8 pages of {page_bytes}",
            span.len()
        );
        assert!(page_count * slots_per_page_max <= u32::MAX as usize);
        let mut sizes = vec![];
        let mut size = SMALLEST_SLOT_BYTES;
        while size < frame_bytes_max {
            sizes.push(size);
            size *= 4;
        }
        sizes.push(frame_bytes_max.div_ceil(SLOT_ALIGN) * SLOT_ALIGN);
        let classes = sizes
            .into_iter()
            .map(|slot_bytes| Class {
                slot_bytes,
                slots_per_page: page_bytes / slot_bytes,
                partial: Vec::with_capacity(page_count),
            })
            .collect();
        let pages = (0..page_count)
            .map(|_| Page {
                class: None,
                used: 0,
                free: Vec::with_capacity(slots_per_page_max),
                partial_at: NIL,
            })
            .collect();
        Arena {
            span,
            buf_index,
            page_bytes,
            slots_per_page_max,
            classes,
            pages,
            // Popped from the back: hand out low pages first.
            free_pages: (0..page_count as u32).rev().collect(),
            reserve_pages: (page_count / 64).max(2),
            refs: vec![0; page_count * slots_per_page_max],
            lens: vec![0; page_count * slots_per_page_max],
            frames_live: 0,
        }
    }

    fn class_of(&self, len: usize) -> Option<usize> {
        self.classes.iter().position(|c| c.slot_bytes >= len)
    }

    fn split(&self, frame: FrameRef) -> (usize, usize) {
        let id = frame.0 as usize;
        (id / self.slots_per_page_max, id % self.slots_per_page_max)
    }

    /// A new frame of `len` bytes with one reference, or None when no page
    /// is left for it. Fill it with `bytes_mut` before sharing it.
    pub fn alloc(&mut self, len: usize, purpose: Use) -> Option<FrameRef> {
        assert!(len > 0);
        let c = self.class_of(len)?;
        if self.classes[c].partial.is_empty() {
            let reserve = match purpose {
                Use::Event => self.reserve_pages,
                Use::Control => 0,
            };
            if self.free_pages.len() <= reserve {
                return None;
            }
            let page = self.free_pages.pop().expect("checked above");
            self.assign(page, c);
        }
        let page = *self.classes[c].partial.last().expect("a page with room");
        let p = &mut self.pages[page as usize];
        let slot = p.free.pop().expect("a partial page has a free slot") as usize;
        p.used += 1;
        if p.free.is_empty() {
            self.unlist(page);
        }
        let id = page as usize * self.slots_per_page_max + slot;
        debug_assert_eq!(self.refs[id], 0);
        self.refs[id] = 1;
        self.lens[id] = len as u32;
        self.frames_live += 1;
        Some(FrameRef(id as u32))
    }

    /// Gives a pooled page to class `c`, all its slots free.
    fn assign(&mut self, page: u32, c: usize) {
        let slots = self.classes[c].slots_per_page;
        let p = &mut self.pages[page as usize];
        debug_assert!(p.class.is_none() && p.used == 0);
        p.class = Some(c as u8);
        p.free.clear();
        // Popped from the back: hand out low slots first.
        p.free.extend((0..slots as u16).rev());
        p.partial_at = self.classes[c].partial.len() as u32;
        self.classes[c].partial.push(page);
    }

    /// Takes a page off its class's list of pages with room.
    fn unlist(&mut self, page: u32) {
        let p = &mut self.pages[page as usize];
        let at = p.partial_at as usize;
        p.partial_at = NIL;
        let class = &mut self.classes[p.class.expect("a listed page has a class") as usize];
        class.partial.swap_remove(at);
        if let Some(&moved) = class.partial.get(at) {
            self.pages[moved as usize].partial_at = at as u32;
        }
    }

    fn offset(&self, frame: FrameRef) -> (usize, usize) {
        let (page, slot) = self.split(frame);
        assert!(self.refs[frame.0 as usize] > 0, "use of a released frame");
        let class = self.pages[page]
            .class
            .expect("a live frame's page has a class");
        let slot_bytes = self.classes[class as usize].slot_bytes;
        (
            page * self.page_bytes + slot * slot_bytes,
            self.lens[frame.0 as usize] as usize,
        )
    }

    pub fn bytes(&self, frame: FrameRef) -> &[u8] {
        let (offset, len) = self.offset(frame);
        self.span.bytes(offset, len)
    }

    /// The bytes of a frame nobody else holds yet (just allocated).
    pub fn bytes_mut(&mut self, frame: FrameRef) -> &mut [u8] {
        assert_eq!(
            self.refs[frame.0 as usize], 1,
            "frames are immutable once shared"
        );
        let (offset, len) = self.offset(frame);
        self.span.bytes_mut(offset, len)
    }

    pub fn len(&self, frame: FrameRef) -> usize {
        self.offset(frame).1
    }

    /// Address of byte `at` of the frame, for the kernel.
    pub fn ptr(&self, frame: FrameRef, at: usize) -> *const u8 {
        let (offset, len) = self.offset(frame);
        assert!(at < len);
        self.span.ptr(offset + at)
    }

    pub fn buf_index(&self) -> u16 {
        self.buf_index
    }

    pub fn retain(&mut self, frame: FrameRef) {
        let refs = &mut self.refs[frame.0 as usize];
        assert!(*refs > 0, "retain of a released frame");
        *refs += 1;
    }

    pub fn release(&mut self, frame: FrameRef) {
        let refs = &mut self.refs[frame.0 as usize];
        assert!(*refs > 0, "double release of a frame");
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        self.frames_live -= 1;
        let (page, slot) = self.split(frame);
        let p = &mut self.pages[page];
        p.free.push(slot as u16);
        p.used -= 1;
        let c = p.class.expect("a live frame's page has a class") as usize;
        if p.free.len() == 1 {
            // It was full: it has room again.
            p.partial_at = self.classes[c].partial.len() as u32;
            self.classes[c].partial.push(page as u32);
        }
        let p = &self.pages[page];
        // An empty page goes back to the pool, unless it is its class's only
        // page with room (a class that hovers around one frame must not take
        // and return a page on every frame).
        if p.used == 0 && self.classes[c].partial.len() > 1 {
            self.unlist(page as u32);
            self.pages[page].class = None;
            self.free_pages.push(page as u32);
        }
    }

    /// Frames with at least one reference: zero once everything is released.
    pub fn frames_live(&self) -> usize {
        self.frames_live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluecast_sys::{PageKind, Region};

    fn arena(bytes: usize, frame_bytes_max: usize) -> (Region, Arena) {
        let region = Region::map(bytes, PageKind::Transparent, None).unwrap();
        let span = region.spans(1).pop().unwrap();
        (region, Arena::new(span, 0, frame_bytes_max))
    }

    #[test]
    fn frames_are_refcounted_and_slots_reused() {
        let (_region, mut arena) = arena(4 << 20, 70_000);
        let a = arena.alloc(100, Use::Event).unwrap();
        arena.bytes_mut(a).copy_from_slice(&[7; 100]);
        arena.retain(a);
        arena.release(a);
        assert_eq!(arena.bytes(a), &[7; 100][..]);
        arena.release(a);
        assert_eq!(arena.frames_live(), 0);
        let b = arena.alloc(50, Use::Event).unwrap();
        assert_eq!(b, a, "the freed slot is handed out again");
        arena.release(b);
    }

    #[test]
    fn each_size_lands_in_a_slot_that_fits_and_frames_do_not_overlap() {
        let (_region, mut arena) = arena(4 << 20, 70_000);
        let sizes = [1, 128, 129, 2048, 9000, 70_000];
        let frames: Vec<FrameRef> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let f = arena.alloc(len, Use::Event).unwrap();
                arena.bytes_mut(f).fill(i as u8);
                f
            })
            .collect();
        for (i, (&f, &len)) in frames.iter().zip(&sizes).enumerate() {
            assert_eq!(arena.len(f), len);
            assert!(
                arena.bytes(f).iter().all(|&b| b == i as u8),
                "frame {i} overwritten"
            );
            arena.release(f);
        }
        assert!(
            arena.alloc(70_100, Use::Control).is_none(),
            "beyond the largest class"
        );
    }

    #[test]
    fn a_full_arena_refuses_events_but_still_answers() {
        let (_region, mut arena) = arena(4 << 20, 70_000);
        let mut held = vec![];
        while let Some(f) = arena.alloc(60_000, Use::Event) {
            held.push(f);
        }
        assert!(held.len() > 20, "only {} large frames fit", held.len());
        assert!(
            arena.alloc(100, Use::Event).is_none(),
            "no page left for events"
        );
        let ack = arena
            .alloc(28, Use::Control)
            .expect("the reserve serves control frames");
        arena.release(ack);
        for f in held.drain(..) {
            arena.release(f);
        }
        assert_eq!(arena.frames_live(), 0);
    }

    #[test]
    fn pages_move_between_size_classes_as_the_workload_changes() {
        let (_region, mut arena) = arena(4 << 20, 70_000);
        let mut small = vec![];
        while let Some(f) = arena.alloc(100, Use::Event) {
            small.push(f);
        }
        assert!(arena.alloc(60_000, Use::Event).is_none());
        for f in small.drain(..) {
            arena.release(f);
        }
        // Every page but one (kept by the small class) serves large frames now.
        let mut large = vec![];
        while let Some(f) = arena.alloc(60_000, Use::Event) {
            large.push(f);
        }
        let pages = (4 << 20) / Arena::page_bytes_for(70_000);
        let reserve = (pages / 64).max(2);
        let per_page = Arena::page_bytes_for(70_000) / 70_016;
        assert_eq!(large.len(), (pages - 1 - reserve) * per_page);
        for f in large {
            arena.release(f);
        }
    }

    #[test]
    #[should_panic(expected = "double release")]
    fn double_release_is_caught() {
        let (_region, mut arena) = arena(4 << 20, 4096);
        let f = arena.alloc(10, Use::Event).unwrap();
        arena.release(f);
        arena.release(f);
    }
}
