//! SMBIOS identity from `/sys/class/dmi/id/*`: trimmed, empty → `None`, bogus values
//! kept as read. The UUID is lowercased (some firmware/kernels show it uppercase).

use std::path::Path;

use substruct_wire::report::Dmi;

use super::sysfs::read_trimmed;

/// Reads every `/sys/class/dmi/id` field under `root`.
pub fn gather(root: &Path) -> Dmi {
    let dir = root.join("sys/class/dmi/id");
    let f = |name: &str| read_trimmed(&dir.join(name));
    Dmi {
        sys_vendor: f("sys_vendor"),
        product_name: f("product_name"),
        product_version: f("product_version"),
        product_serial: f("product_serial"),
        product_uuid: f("product_uuid").map(|u| u.to_ascii_lowercase()),
        product_sku: f("product_sku"),
        product_family: f("product_family"),
        board_vendor: f("board_vendor"),
        board_name: f("board_name"),
        board_serial: f("board_serial"),
        chassis_serial: f("chassis_serial"),
        chassis_asset_tag: f("chassis_asset_tag"),
        bios_vendor: f("bios_vendor"),
        bios_version: f("bios_version"),
        bios_date: f("bios_date"),
    }
}
