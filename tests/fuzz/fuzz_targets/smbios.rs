//! The prospector's SMBIOS structure-table parser (`facts::smbios::structures`,
//! `parse_dimms`): the bytes of `/sys/firmware/dmi/tables/DMI`, as firmware wrote them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use substruct_prospector::facts::smbios::{parse_dimms, structures};

fuzz_target!(|data: &[u8]| {
    for s in structures(data) {
        assert!(s.formatted.len() <= data.len());
    }
    let _ = parse_dimms(data);
});
