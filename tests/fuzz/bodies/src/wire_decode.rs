use std::fmt::Debug;

use substruct_wire::intent::{BootIntentRecord, InstallFilesRecord};
use substruct_wire::messages::{
    CallbackReply, CallbackRequest, Command, DiscoverReply, DiscoverRequest, ErrorReply, SiteEvent,
};
use substruct_wire::power_msg::{BmcSettings, PowerAck, PowerRequest, PowerResult};
use substruct_wire::{decode, encode, peek, WireMessage};

/// `substruct_wire::decode::<T>` for every message kind (the envelope, then the
/// postcard body: ids, names, digests and URLs validated on deserialization). Whatever
/// decodes must encode again and decode to the same value.
///
/// Input: one enveloped wire message (as a NATS payload or KV value carries it), tried
/// as every kind, and `peek`ed.
pub fn wire_decode(data: &[u8]) {
    let _ = peek(data);
    check::<DiscoverRequest>(data);
    check::<DiscoverReply>(data);
    check::<CallbackRequest>(data);
    check::<CallbackReply>(data);
    check::<Command>(data);
    check::<ErrorReply>(data);
    check::<SiteEvent>(data);
    check::<BootIntentRecord>(data);
    check::<InstallFilesRecord>(data);
    check::<PowerRequest>(data);
    check::<PowerResult>(data);
    check::<PowerAck>(data);
    check::<BmcSettings>(data);
}

/// `data` decoded as a `T`, if it is one, round-trips through `encode`.
fn check<T: WireMessage + Debug>(data: &[u8]) {
    if let Ok(msg) = decode::<T>(data) {
        let bytes = encode(&msg).expect("a decoded message encodes");
        let again = decode::<T>(&bytes).expect("an encoded message decodes");
        assert_eq!(format!("{msg:?}"), format!("{again:?}"));
    }
}
