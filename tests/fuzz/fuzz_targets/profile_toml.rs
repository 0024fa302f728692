//! An operator's profile: `Profile::from_toml`, then `validate` (fields, image lookups,
//! the template rendered against the sample machine), then the boot intent and the
//! deploy instruction.
#![no_main]

use libfuzzer_sys::fuzz_target;
use substruct_controller::images::{ImageKind, ImageRecord};
use substruct_controller::profile::Profile;
use substruct_wire::{ImageName, Sha256Digest};

/// Every valid name is a registered image; its kind follows its name, so the lookups
/// pass for names that look right and the template is reached.
fn lookup(name: &str) -> Option<ImageRecord> {
    let kind = if name.contains("vmlinuz") || name.contains("kernel") {
        ImageKind::Kernel
    } else if name.contains("initrd") {
        ImageKind::Initrd
    } else {
        ImageKind::Disk
    };
    Some(ImageRecord {
        name: ImageName::new(name).ok()?,
        kind,
        sha256: Sha256Digest::of(b"image"),
        size: 1 << 30,
        added_unix_ms: 0,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(profile) = Profile::from_toml(text) else {
        return;
    };
    let _ = profile.validate(&lookup);
});
