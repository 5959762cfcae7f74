//! A hashed timer wheel for connection deadlines (idle, token expiry, linger).
//!
//! One timer per connection slot, linked through arrays sized at start-up, so
//! scheduling and cancelling are O(1) and allocate nothing. Deadlines past the
//! wheel's span wait in their slot and are re-checked each revolution.

const NIL: u32 = u32::MAX;

pub struct TimerWheel {
    tick_ms: u64,
    slots: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
    /// Slot each entry is linked in, NIL when not scheduled.
    slot_of: Vec<u32>,
    deadline_ms: Vec<u64>,
    /// The next tick to process.
    cursor_tick: u64,
}

impl TimerWheel {
    pub fn new(entries: usize, slot_count: usize, tick_ms: u64, now_ms: u64) -> TimerWheel {
        assert!(slot_count.is_power_of_two() && tick_ms > 0);
        TimerWheel {
            tick_ms,
            slots: vec![NIL; slot_count],
            next: vec![NIL; entries],
            prev: vec![NIL; entries],
            slot_of: vec![NIL; entries],
            deadline_ms: vec![0; entries],
            cursor_tick: now_ms / tick_ms,
        }
    }

    /// (Re)schedules entry `index` to fire at or after `deadline_ms`.
    pub fn schedule(&mut self, index: u32, deadline_ms: u64) {
        self.cancel(index);
        let i = index as usize;
        // Never behind the cursor: a past deadline fires on the next tick.
        let tick = (deadline_ms.div_ceil(self.tick_ms)).max(self.cursor_tick);
        let slot = (tick as usize) & (self.slots.len() - 1);
        self.deadline_ms[i] = deadline_ms;
        self.slot_of[i] = slot as u32;
        self.prev[i] = NIL;
        self.next[i] = self.slots[slot];
        if self.slots[slot] != NIL {
            self.prev[self.slots[slot] as usize] = index;
        }
        self.slots[slot] = index;
    }

    pub fn cancel(&mut self, index: u32) {
        let i = index as usize;
        let slot = self.slot_of[i];
        if slot == NIL {
            return;
        }
        let (prev, next) = (self.prev[i], self.next[i]);
        if prev == NIL {
            self.slots[slot as usize] = next;
        } else {
            self.next[prev as usize] = next;
        }
        if next != NIL {
            self.prev[next as usize] = prev;
        }
        self.slot_of[i] = NIL;
    }

    /// Moves every entry whose deadline has passed into `fired` (unscheduled).
    pub fn expire(&mut self, now_ms: u64, fired: &mut Vec<u32>) {
        let now_tick = now_ms / self.tick_ms;
        // Beyond one revolution every slot is due for a look anyway.
        let last = now_tick.min(self.cursor_tick + self.slots.len() as u64 - 1);
        while self.cursor_tick <= last {
            let slot = (self.cursor_tick as usize) & (self.slots.len() - 1);
            let mut at = self.slots[slot];
            while at != NIL {
                let next = self.next[at as usize];
                if self.deadline_ms[at as usize] <= now_ms {
                    self.cancel(at);
                    fired.push(at);
                }
                at = next;
            }
            self.cursor_tick += 1;
        }
        self.cursor_tick = self.cursor_tick.max(now_tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_deadline_not_before() {
        let mut wheel = TimerWheel::new(8, 16, 10, 0);
        wheel.schedule(3, 45);
        let mut fired = vec![];
        wheel.expire(40, &mut fired);
        assert!(fired.is_empty());
        wheel.expire(50, &mut fired);
        assert_eq!(fired, vec![3]);
        fired.clear();
        wheel.expire(500, &mut fired);
        assert!(fired.is_empty(), "an entry fires once");
    }

    #[test]
    fn deadlines_beyond_one_revolution_wait_their_turn() {
        let mut wheel = TimerWheel::new(8, 4, 10, 0);
        wheel.schedule(1, 1_000);
        let mut fired = vec![];
        for now in (0..1_000).step_by(10) {
            wheel.expire(now, &mut fired);
            assert!(fired.is_empty(), "fired early at {now}");
        }
        wheel.expire(1_000, &mut fired);
        assert_eq!(fired, vec![1]);
    }

    #[test]
    fn cancel_and_reschedule_unlink_cleanly() {
        let mut wheel = TimerWheel::new(8, 16, 10, 0);
        for i in 0..5 {
            wheel.schedule(i, 30);
        }
        wheel.cancel(2);
        wheel.schedule(4, 200);
        let mut fired = vec![];
        wheel.expire(30, &mut fired);
        fired.sort();
        assert_eq!(fired, vec![0, 1, 3]);
        fired.clear();
        wheel.expire(10_000, &mut fired);
        assert_eq!(fired, vec![4]);
    }
}
