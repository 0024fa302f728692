use substruct_prospector::facts::smbios::{parse_dimms, structures};

/// The prospector's SMBIOS structure-table parser (`facts::smbios::structures`,
/// `parse_dimms`). No structure's formatted area may be longer than the input.
///
/// Input: the bytes of `/sys/firmware/dmi/tables/DMI`, as firmware wrote them.
pub fn smbios(data: &[u8]) {
    for s in structures(data) {
        assert!(s.formatted.len() <= data.len());
    }
    let _ = parse_dimms(data);
}
