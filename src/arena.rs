//! The frame arena: every byte a shard sends comes from here. A frame is
//! encoded once, then shared by reference count between the topic history and
//! every connection queue that holds it; the kernel reads it in place (the
//! arena is registered as a fixed buffer for zero-copy sends).
//!
//! Memory is one span of a region mapped at start-up, cut into size classes
//! of fixed slots. Nothing is allocated after start-up: when a class is full
//! `alloc` says so and the caller evicts history or pushes back.

use cluecast_sys::Span;

/// A frame in the arena: class in the top 4 bits, slot below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameRef(u32);

const CLASS_SHIFT: u32 = 28;
const SLOT_MASK: u32 = (1 << CLASS_SHIFT) - 1;
const SMALLEST_SLOT_BYTES: usize = 128;
const SLOT_ALIGN: usize = 64;

struct Class {
    slot_bytes: usize,
    /// Offset of slot 0 in the span.
    offset: usize,
    free: Vec<u32>,
    refs: Vec<u32>,
    lens: Vec<u32>,
}

pub struct Arena {
    span: Span,
    /// Index of this span in the rings' fixed-buffer table.
    buf_index: u16,
    classes: Vec<Class>,
    frames_live: usize,
}

impl Arena {
    /// Cuts `span` into classes of 128 B, 512 B, 2 KiB, ... up to the first
    /// class that holds `frame_bytes_max`, each class getting an equal share
    /// of the bytes.
    pub fn new(span: Span, buf_index: u16, frame_bytes_max: usize) -> Arena {
        let mut sizes = vec![];
        let mut size = SMALLEST_SLOT_BYTES;
        while size < frame_bytes_max {
            sizes.push(size);
            size *= 4;
        }
        sizes.push(frame_bytes_max.div_ceil(SLOT_ALIGN) * SLOT_ALIGN);
        assert!(sizes.len() <= 1 << (32 - CLASS_SHIFT));
        let share = span.len() / sizes.len() / SLOT_ALIGN * SLOT_ALIGN;
        let classes: Vec<Class> = sizes
            .iter()
            .enumerate()
            .map(|(i, &slot_bytes)| {
                let slots = (share / slot_bytes).min(SLOT_MASK as usize) as u32;
                assert!(slots > 0, "arena too small for {slot_bytes}-byte frames");
                Class {
                    slot_bytes,
                    offset: i * share,
                    // Popped from the back: hand out low slots first.
                    free: (0..slots).rev().collect(),
                    refs: vec![0; slots as usize],
                    lens: vec![0; slots as usize],
                }
            })
            .collect();
        Arena {
            span,
            buf_index,
            classes,
            frames_live: 0,
        }
    }

    fn class_of(&self, len: usize) -> Option<usize> {
        self.classes.iter().position(|c| c.slot_bytes >= len)
    }

    fn split(frame: FrameRef) -> (usize, usize) {
        (
            (frame.0 >> CLASS_SHIFT) as usize,
            (frame.0 & SLOT_MASK) as usize,
        )
    }

    /// A new frame of `len` bytes with one reference, or None if its class
    /// is exhausted. Fill it with `bytes_mut` before sharing it.
    pub fn alloc(&mut self, len: usize) -> Option<FrameRef> {
        assert!(len > 0);
        let class_index = self.class_of(len)?;
        let class = &mut self.classes[class_index];
        let slot = class.free.pop()?;
        debug_assert_eq!(class.refs[slot as usize], 0);
        class.refs[slot as usize] = 1;
        class.lens[slot as usize] = len as u32;
        self.frames_live += 1;
        Some(FrameRef((class_index as u32) << CLASS_SHIFT | slot))
    }

    /// Whether a frame of `len` bytes could be allocated now.
    pub fn can_alloc(&self, len: usize) -> bool {
        self.class_of(len)
            .is_some_and(|c| !self.classes[c].free.is_empty())
    }

    fn offset(&self, frame: FrameRef) -> (usize, usize) {
        let (class, slot) = Self::split(frame);
        let c = &self.classes[class];
        assert!(c.refs[slot] > 0, "use of a released frame");
        (c.offset + slot * c.slot_bytes, c.lens[slot] as usize)
    }

    pub fn bytes(&self, frame: FrameRef) -> &[u8] {
        let (offset, len) = self.offset(frame);
        self.span.bytes(offset, len)
    }

    /// The bytes of a frame nobody else holds yet (just allocated).
    pub fn bytes_mut(&mut self, frame: FrameRef) -> &mut [u8] {
        let (class, slot) = Self::split(frame);
        assert_eq!(
            self.classes[class].refs[slot], 1,
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
        let (class, slot) = Self::split(frame);
        let refs = &mut self.classes[class].refs[slot];
        assert!(*refs > 0, "retain of a released frame");
        *refs += 1;
    }

    pub fn release(&mut self, frame: FrameRef) {
        let (class, slot) = Self::split(frame);
        let c = &mut self.classes[class];
        assert!(c.refs[slot] > 0, "double release of a frame");
        c.refs[slot] -= 1;
        if c.refs[slot] == 0 {
            c.free.push(slot as u32);
            self.frames_live -= 1;
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
    use cluecast_sys::Region;

    fn arena(bytes: usize, frame_bytes_max: usize) -> (Region, Arena) {
        let region = Region::map(bytes, false).unwrap();
        let span = region.spans(1).pop().unwrap();
        (region, Arena::new(span, 0, frame_bytes_max))
    }

    #[test]
    fn frames_are_refcounted_and_slots_reused() {
        let (_region, mut arena) = arena(1 << 20, 70_000);
        let a = arena.alloc(100).unwrap();
        arena.bytes_mut(a).copy_from_slice(&[7; 100]);
        arena.retain(a);
        arena.release(a);
        assert_eq!(arena.bytes(a), &[7; 100][..]);
        arena.release(a);
        assert_eq!(arena.frames_live(), 0);
        let b = arena.alloc(50).unwrap();
        assert_eq!(b, a, "the freed slot is handed out again");
        arena.release(b);
    }

    #[test]
    fn each_size_lands_in_a_class_that_fits_and_exhaustion_is_reported() {
        let (_region, mut arena) = arena(1 << 20, 70_000);
        for len in [1, 128, 129, 2048, 70_000] {
            let f = arena.alloc(len).unwrap();
            assert_eq!(arena.len(f), len);
            assert_eq!(arena.bytes_mut(f).len(), len);
            arena.release(f);
        }
        assert!(arena.alloc(70_100).is_none(), "beyond the largest class");
        let mut held = vec![];
        while let Some(f) = arena.alloc(70_000) {
            held.push(f);
        }
        assert!(!held.is_empty());
        assert!(!arena.can_alloc(70_000));
        assert!(arena.can_alloc(10), "other classes are unaffected");
        for f in held {
            arena.release(f);
        }
        assert!(arena.can_alloc(70_000));
    }

    #[test]
    #[should_panic(expected = "double release")]
    fn double_release_is_caught() {
        let (_region, mut arena) = arena(1 << 20, 4096);
        let f = arena.alloc(10).unwrap();
        arena.release(f);
        arena.release(f);
    }
}
