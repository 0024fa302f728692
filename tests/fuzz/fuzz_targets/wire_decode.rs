//! `substruct_wire::decode::<T>` for every message kind (the envelope, then the
//! postcard body: ids, names, digests and URLs validated on deserialization). Whatever
//! decodes must encode again and decode to the same value.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use substruct_wire::intent::{BootIntentRecord, InstallFilesRecord};
use substruct_wire::messages::{
    CallbackReply, CallbackRequest, Command, DiscoverReply, DiscoverRequest, ErrorReply, SiteEvent,
};
use substruct_wire::power_msg::{BmcSettings, PowerAck, PowerRequest, PowerResult};
use substruct_wire::{decode, encode, peek, WireMessage};

fn check<T: WireMessage + Debug>(data: &[u8]) {
    if let Ok(msg) = decode::<T>(data) {
        let bytes = encode(&msg).expect("a decoded message encodes");
        let again = decode::<T>(&bytes).expect("an encoded message decodes");
        assert_eq!(format!("{msg:?}"), format!("{again:?}"));
    }
}

fuzz_target!(|data: &[u8]| {
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
});
