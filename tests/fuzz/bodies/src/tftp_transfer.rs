use substruct_edge::tftp::transfer::{Action, Transfer};

/// The edge's TFTP transfer state machine (`tftp::transfer::Transfer`): windows,
/// retransmits and block-number rollover under any sequence of ACKs and timeouts. Every
/// window sent lies inside the file; after the fuzzed operations, a lossless client
/// (ACKing the end of every window) must finish in a bounded number of steps.
///
/// Input: a header, then operations.
/// - Header: 8 bytes size (little-endian, taken modulo 64 MiB), 2 blksize, 2
///   windowsize (both little-endian), 1 max_retries, 1 flags (bit 0: the transfer
///   starts with an OACK).
/// - Operations: `0x00` a timeout; any other byte followed by two bytes (little-endian)
///   an ACK of that block number.
pub fn tftp_transfer(data: &[u8]) {
    let mut data = data;
    let (Some(size), Some(blk), Some(win), Some([retries]), Some([flags])) = (
        take::<8>(&mut data),
        take::<2>(&mut data),
        take::<2>(&mut data),
        take::<1>(&mut data),
        take::<1>(&mut data),
    ) else {
        return;
    };
    // big enough to roll block numbers over at a small blksize, small enough to finish
    let size = u64::from_le_bytes(size) % (1 << 26);
    let blksize = u16::from_le_bytes(blk);
    let windowsize = u16::from_le_bytes(win);
    let with_oack = flags & 1 != 0;
    let mut t = Transfer::new(size, blksize, windowsize, u32::from(retries), with_oack);
    let last = t.last_block();
    let first = if with_oack { 0 } else { 1 };
    let check = |t: &Transfer, a: &Action| {
        if let Action::SendBlocks(r) = a {
            assert!(
                r.start >= 1 && r.start <= r.end && r.end <= last + 1,
                "{r:?}, last {last}"
            );
            assert!(r.start >= first);
            let span = t.block_span(r.start);
            assert!(span.start <= span.end && span.end <= size);
        }
    };
    let a = t.start();
    check(&t, &a);
    let mut done = false;
    while let Some([op]) = take::<1>(&mut data) {
        let a = if op == 0 {
            t.on_timeout()
        } else {
            let Some(b) = take::<2>(&mut data) else { break };
            t.on_ack(u16::from_le_bytes(b))
        };
        check(&t, &a);
        match a {
            Action::Done | Action::GiveUp => {
                done = true;
                break;
            }
            _ => {}
        }
    }
    if done {
        return;
    }
    // then a lossless client: ACK the end of every window; must finish in bounded steps
    let windows = last / u64::from(windowsize.max(1)) + 2;
    if windows > 100_000 {
        return;
    }
    let mut a = t.on_timeout();
    for _ in 0..2 * windows + 8 {
        check(&t, &a);
        a = match &a {
            Action::SendOack => t.on_ack(0),
            Action::SendBlocks(r) => t.on_ack(Transfer::wire_block(r.end - 1)),
            Action::Wait => t.on_timeout(),
            Action::Done | Action::GiveUp => return,
        };
    }
    panic!("a lossless transfer of {size} bytes did not finish");
}

/// The next `N` bytes of `data`, consumed; `None` when fewer are left.
fn take<const N: usize>(data: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = data.split_first_chunk::<N>()?;
    *data = rest;
    Some(*head)
}
