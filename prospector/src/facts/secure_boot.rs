//! UEFI Secure Boot, from `/sys/kernel/boot_params/data`.
//!
//! On x86 that file is the raw `struct boot_params` the kernel was started with; the
//! kernel's EFI stub asks the firmware and writes its answer into the byte at
//! [`SECURE_BOOT_OFFSET`] (`enum efi_secureboot_mode`: 0 unset, 1 unknown, 2 disabled,
//! 3 enabled). A BIOS boot has no Secure Boot at all.

use std::path::Path;

use substruct_wire::report::BootMode;

use super::sysfs::read_bytes;

/// Offset of `secure_boot` in `struct boot_params` (arch/x86/include/uapi/asm/bootparam.h).
pub const SECURE_BOOT_OFFSET: usize = 0x1EC;
/// `efi_secureboot_mode_disabled`.
const DISABLED: u8 = 2;
/// `efi_secureboot_mode_enabled`.
const ENABLED: u8 = 3;

/// Whether Secure Boot is on: `Some(false)` for a BIOS boot; for a UEFI boot, what
/// `<root>/sys/kernel/boot_params/data` says (`None` when unreadable or not known).
pub fn gather(root: &Path, boot_mode: BootMode) -> Option<bool> {
    match boot_mode {
        BootMode::Bios => Some(false),
        BootMode::Uefi => {
            read_bytes(&root.join("sys/kernel/boot_params/data")).and_then(|b| parse(&b))
        }
    }
}

/// The `secure_boot` byte of a raw `struct boot_params`: enabled → `Some(true)`,
/// disabled → `Some(false)`; unset, unknown, any other value or too short → `None`.
pub fn parse(boot_params: &[u8]) -> Option<bool> {
    match *boot_params.get(SECURE_BOOT_OFFSET)? {
        ENABLED => Some(true),
        DISABLED => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 KiB `boot_params` page (as the kernel exposes it) with `secure_boot` = `mode`.
    fn params(mode: u8) -> Vec<u8> {
        let mut page = vec![0xAA; 4096];
        page[SECURE_BOOT_OFFSET] = mode;
        page
    }

    #[test]
    fn the_secure_boot_byte() {
        assert_eq!(parse(&params(3)), Some(true));
        assert_eq!(parse(&params(2)), Some(false));
        assert_eq!(parse(&params(1)), None, "unknown");
        assert_eq!(
            parse(&params(0)),
            None,
            "unset: not booted through the EFI stub"
        );
        assert_eq!(parse(&params(4)), None);
        assert_eq!(parse(&params(0xFF)), None);
        // Its neighbours do not count.
        let mut page = params(0);
        page[SECURE_BOOT_OFFSET - 1] = 3;
        page[SECURE_BOOT_OFFSET + 1] = 3;
        assert_eq!(parse(&page), None);
    }

    #[test]
    fn too_short_is_not_known() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&params(3)[..SECURE_BOOT_OFFSET]), None);
        assert_eq!(parse(&params(3)[..=SECURE_BOOT_OFFSET]), Some(true));
    }

    #[test]
    fn gathered_under_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // BIOS: no Secure Boot, whatever boot_params says.
        assert_eq!(gather(root, BootMode::Bios), Some(false));
        // UEFI without a readable boot_params (not x86, or no sysfs): not known.
        assert_eq!(gather(root, BootMode::Uefi), None);
        std::fs::create_dir_all(root.join("sys/kernel/boot_params")).unwrap();
        let data = root.join("sys/kernel/boot_params/data");
        for (mode, want) in [(3, Some(true)), (2, Some(false)), (1, None), (0, None)] {
            std::fs::write(&data, params(mode)).unwrap();
            assert_eq!(gather(root, BootMode::Uefi), want, "mode {mode}");
            assert_eq!(gather(root, BootMode::Bios), Some(false), "mode {mode}");
        }
        std::fs::write(&data, [3; 16]).unwrap();
        assert_eq!(gather(root, BootMode::Uefi), None, "truncated");
    }
}
