use substruct_controller::images::{ImageKind, ImageRecord};
use substruct_controller::profile::Profile;
use substruct_wire::{ImageName, Sha256Digest};

/// An operator's profile: `Profile::from_toml`, then `validate` (fields, image lookups,
/// the template rendered against the sample machine), then the boot intent and the
/// deploy instruction.
///
/// Input: the profile's TOML text (UTF-8). Every valid image name it refers to is a
/// registered image whose kind follows its name (`vmlinuz` or `kernel`: a kernel,
/// `initrd`: an initrd, else a disk).
pub fn profile_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(profile) = Profile::from_toml(text) else {
        return;
    };
    let _ = profile.validate(&lookup);
}

/// Every valid name is a registered image; its kind follows its name (`vmlinuz` or
/// `kernel`: a kernel, `initrd`: an initrd, else a disk), so the lookups pass for names
/// that look right and the template is reached.
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
