//! The sending side of one read transfer as a pure state machine: no sockets, no clock.
//!
//! Blocks are counted with a 64-bit index (the OACK is index 0, the first DATA block index 1);
//! the 16-bit block number on the wire is the index truncated, so it rolls over from 65535 to 0
//! and files larger than 65535 blocks transfer. Windows follow RFC 7440: the server sends up to
//! `windowsize` blocks, the client acknowledges the last block it received in order, and the
//! next window starts after that block.

use std::ops::Range;

/// What the I/O shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send (or re-send) the OACK, then wait for ACK 0.
    SendOack,
    /// Send the DATA blocks with these indices (see [`Transfer::block_span`]), then wait.
    SendBlocks(Range<u64>),
    /// Nothing to send; keep waiting (a duplicate or stray ACK).
    Wait,
    /// The last block was acknowledged: the transfer is complete.
    Done,
    /// Too many timeouts in a row: abandon the transfer.
    GiveUp,
}

/// State of one read transfer.
#[derive(Debug, Clone)]
pub struct Transfer {
    size: u64,
    blksize: u64,
    windowsize: u64,
    max_retries: u32,
    /// Index of the last DATA block (the first one shorter than `blksize`, possibly empty).
    last: u64,
    /// Lowest index not yet acknowledged.
    base: u64,
    /// One past the highest index sent.
    sent_end: u64,
    retries: u32,
    started: bool,
}

impl Transfer {
    /// A transfer of `size` bytes. `with_oack` when the request carried options we acknowledge.
    /// `blksize` and `windowsize` of 0 are treated as 1.
    pub fn new(
        size: u64,
        blksize: u16,
        windowsize: u16,
        max_retries: u32,
        with_oack: bool,
    ) -> Self {
        let blksize = u64::from(blksize.max(1));
        let first = if with_oack { 0 } else { 1 };
        Transfer {
            size,
            blksize,
            windowsize: u64::from(windowsize.max(1)),
            max_retries,
            last: size / blksize + 1,
            base: first,
            sent_end: first,
            retries: 0,
            started: false,
        }
    }

    /// Index of the last DATA block.
    pub fn last_block(&self) -> u64 {
        self.last
    }

    /// The first action: the OACK, or the first window of DATA.
    pub fn start(&mut self) -> Action {
        self.started = true;
        if self.base == 0 {
            self.sent_end = 1;
            Action::SendOack
        } else {
            self.next_window()
        }
    }

    /// Byte range of the file carried by DATA block `index` (1-based).
    pub fn block_span(&self, index: u64) -> Range<u64> {
        let start = index
            .saturating_sub(1)
            .saturating_mul(self.blksize)
            .min(self.size);
        let end = start.saturating_add(self.blksize).min(self.size);
        start..end
    }

    /// The wire block number of `index`.
    pub fn wire_block(index: u64) -> u16 {
        // Truncation is the RFC-compliant rollover from 65535 to 0.
        (index & 0xffff) as u16
    }

    /// The client acknowledged wire block `block`.
    pub fn on_ack(&mut self, block: u16) -> Action {
        if !self.started {
            return Action::Wait;
        }
        // Map the 16-bit number onto the outstanding indices [base, sent_end); the window is at
        // most 65535 blocks wide, so at most one index matches.
        let outstanding = self.sent_end.saturating_sub(self.base);
        let offset = u64::from(block.wrapping_sub(Self::wire_block(self.base)));
        if offset >= outstanding {
            // A duplicate ACK of an earlier window or garbage: never answer it with data
            // (Sorcerer's Apprentice), the timeout covers real losses.
            return Action::Wait;
        }
        self.base += offset + 1;
        self.retries = 0;
        if self.base > self.last {
            return Action::Done;
        }
        self.next_window()
    }

    /// Nothing arrived within the timeout.
    pub fn on_timeout(&mut self) -> Action {
        if !self.started {
            return self.start();
        }
        self.retries += 1;
        if self.retries > self.max_retries {
            return Action::GiveUp;
        }
        if self.base == 0 {
            Action::SendOack
        } else {
            Action::SendBlocks(self.base..self.sent_end)
        }
    }

    fn next_window(&mut self) -> Action {
        let end = self.base.saturating_add(self.windowsize).min(self.last + 1);
        self.sent_end = end;
        Action::SendBlocks(self.base..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a transfer with a perfect client; returns the bytes received and the wire block
    /// numbers seen.
    fn run_lossless(t: &mut Transfer, with_oack: bool) -> (u64, Vec<u16>) {
        let mut action = t.start();
        let mut received = 0u64;
        let mut wire = Vec::new();
        if with_oack {
            assert_eq!(action, Action::SendOack);
            action = t.on_ack(0);
        }
        loop {
            match action {
                Action::SendBlocks(r) => {
                    let mut last = 0;
                    for i in r {
                        let span = t.block_span(i);
                        received += span.end - span.start;
                        last = Transfer::wire_block(i);
                        wire.push(last);
                    }
                    action = t.on_ack(last);
                }
                Action::Done => return (received, wire),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn small_file_one_block() {
        let mut t = Transfer::new(100, 512, 1, 5, false);
        assert_eq!(t.start(), Action::SendBlocks(1..2));
        assert_eq!(t.block_span(1), 0..100);
        assert_eq!(t.on_ack(1), Action::Done);
    }

    #[test]
    fn exact_multiple_ends_with_empty_block() {
        let mut t = Transfer::new(1024, 512, 1, 5, false);
        let (bytes, wire) = run_lossless(&mut t, false);
        assert_eq!(bytes, 1024);
        assert_eq!(wire, vec![1, 2, 3]);
        assert_eq!(t.block_span(3), 1024..1024);
    }

    #[test]
    fn empty_file_sends_one_empty_block() {
        let mut t = Transfer::new(0, 512, 4, 5, true);
        let (bytes, wire) = run_lossless(&mut t, true);
        assert_eq!(bytes, 0);
        assert_eq!(wire, vec![1]);
    }

    #[test]
    fn block_numbers_roll_over_past_65535() {
        // 64 MiB at blksize 512 = 131072 full blocks + 1 empty block.
        let size = 64 * 1024 * 1024;
        for window in [1u16, 8, 64] {
            let mut t = Transfer::new(size, 512, window, 5, true);
            let (bytes, wire) = run_lossless(&mut t, true);
            assert_eq!(bytes, size);
            assert_eq!(wire.len(), 131073);
            assert_eq!(wire[65534], 65535);
            assert_eq!(wire[65535], 0, "block after 65535 is 0");
            assert_eq!(wire[65536], 1);
            assert_eq!(*wire.last().unwrap(), 1); // index 131073 & 0xffff
            assert_eq!(t.block_span(131073), size..size);
        }
    }

    #[test]
    fn duplicate_ack_is_ignored_not_answered() {
        let mut t = Transfer::new(5000, 512, 1, 5, false);
        assert_eq!(t.start(), Action::SendBlocks(1..2));
        assert_eq!(t.on_ack(1), Action::SendBlocks(2..3));
        assert_eq!(t.on_ack(1), Action::Wait);
        assert_eq!(t.on_ack(0), Action::Wait);
        assert_eq!(t.on_ack(9), Action::Wait);
        assert_eq!(t.on_ack(2), Action::SendBlocks(3..4));
    }

    #[test]
    fn partial_window_ack_restarts_after_acked_block() {
        let mut t = Transfer::new(100_000, 1000, 8, 5, true);
        assert_eq!(t.start(), Action::SendOack);
        assert_eq!(t.on_ack(0), Action::SendBlocks(1..9));
        // Client got 1..=3 only.
        assert_eq!(t.on_ack(3), Action::SendBlocks(4..12));
        assert_eq!(t.on_ack(11), Action::SendBlocks(12..20));
    }

    #[test]
    fn timeout_resends_then_gives_up() {
        let mut t = Transfer::new(100_000, 1000, 4, 2, true);
        assert_eq!(t.start(), Action::SendOack);
        assert_eq!(t.on_timeout(), Action::SendOack);
        assert_eq!(t.on_ack(0), Action::SendBlocks(1..5));
        assert_eq!(t.on_timeout(), Action::SendBlocks(1..5));
        assert_eq!(t.on_timeout(), Action::SendBlocks(1..5));
        assert_eq!(t.on_timeout(), Action::GiveUp);
    }

    #[test]
    fn ack_resets_retry_count() {
        let mut t = Transfer::new(100_000, 1000, 1, 1, false);
        assert_eq!(t.start(), Action::SendBlocks(1..2));
        assert_eq!(t.on_timeout(), Action::SendBlocks(1..2));
        assert_eq!(t.on_ack(1), Action::SendBlocks(2..3));
        assert_eq!(t.on_timeout(), Action::SendBlocks(2..3));
        assert_eq!(t.on_ack(2), Action::SendBlocks(3..4));
    }

    /// Runs a transfer against a model client over a lossy link that loses each packet with
    /// probability `loss_percent` (a seeded xorshift, so runs are reproducible). Returns (bytes
    /// received in order, done).
    fn run_lossy(
        size: u64,
        blksize: u16,
        window: u16,
        loss_percent: u64,
        seed: u64,
    ) -> (u64, bool) {
        let mut t = Transfer::new(size, blksize, window, 10_000, true);
        let mut state = seed | 1;
        let mut lose = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % 100 < loss_percent
        };
        let mut expected = 1u64; // next block the client needs
        let mut received = 0u64;
        let mut action = t.start();
        for _ in 0..1_000_000 {
            // The client answers with the last in-order block, or nothing if all was lost.
            let mut reply = None;
            match action {
                Action::SendOack => {
                    if !lose() {
                        reply = Some(0);
                    }
                }
                Action::SendBlocks(range) => {
                    let mut any = false;
                    for i in range {
                        if lose() {
                            continue;
                        }
                        any = true;
                        if i == expected {
                            let span = t.block_span(i);
                            received += span.end - span.start;
                            expected += 1;
                        }
                    }
                    if any {
                        reply = Some(expected - 1);
                    }
                }
                Action::Wait => {}
                Action::Done => return (received, expected == t.last_block() + 1),
                Action::GiveUp => return (received, false),
            }
            action = match reply {
                Some(index) if !lose() => t.on_ack(Transfer::wire_block(index)),
                _ => t.on_timeout(),
            };
            if action == Action::Wait {
                action = t.on_timeout();
            }
        }
        (received, false)
    }

    #[test]
    fn lossy_link_with_rollover_still_delivers_everything() {
        // 70000 blocks of 8 bytes: past the 16-bit rollover, with 10 % of packets lost.
        for window in [1, 5, 16] {
            let (bytes, done) = run_lossy(70_000 * 8 + 3, 8, window, 10, 42);
            assert!(done, "window {window}");
            assert_eq!(bytes, 70_000 * 8 + 3);
        }
    }

    proptest::proptest! {
        #[test]
        fn random_acks_never_panic_and_never_skip(
            size in 0u64..200_000,
            blksize in 8u16..2000,
            window in 1u16..20,
            acks in proptest::collection::vec(proptest::num::u16::ANY, 0..200),
        ) {
            let mut t = Transfer::new(size, blksize, window, 3, true);
            t.start();
            let mut base_seen = 0u64;
            for a in acks {
                match t.on_ack(a) {
                    Action::SendBlocks(r) => {
                        // A window never starts past the lowest unacknowledged block.
                        proptest::prop_assert!(r.start >= base_seen);
                        proptest::prop_assert!(r.end <= t.last_block() + 1);
                        base_seen = r.start;
                    }
                    Action::Done | Action::Wait => {}
                    other => proptest::prop_assert!(false, "unexpected {other:?}"),
                }
            }
        }

        #[test]
        fn lossy_link_delivers_every_byte_in_order(
            size in 0u64..40_000,
            blksize in 8u16..1500,
            window in 1u16..12,
            loss_percent in 0u64..50,
            seed in proptest::num::u64::ANY,
        ) {
            let (bytes, done) = run_lossy(size, blksize, window, loss_percent, seed);
            proptest::prop_assert!(done);
            proptest::prop_assert_eq!(bytes, size);
        }
    }
}
