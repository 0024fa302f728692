//! Golden bytes for every message kind: today's envelope encoding, pinned.
//!
//! Each kind has a sample with every field set (and its enums through each variant) and
//! the exact envelope bytes as hex, checked both ways: `encode(sample) == golden` and
//! `decode(golden) == sample`. postcard is positional, so when one of these fails the
//! shape of a travelling type changed: that is a new wire version for the kind (its
//! `WireMessage::VERSION`, with `take_older` reading the old bytes), never a new golden.
//! The older versions' goldens and the hostile forms live in `src/envelope.rs` and
//! `src/power_msg.rs`, except `DiscoverRequest` version 2's, which is here
//! (`discover_request_v2_still_decodes`).
//!
//! Every golden starts with the 8-byte header: `53425354` (`SBST`), the version (u16 LE)
//! and the kind (u16 LE).

#![allow(clippy::unwrap_used)]

use std::fmt::Debug;

use substruct_wire::intent::{
    BootIntent, BootIntentRecord, InstallFile, InstallFilesRecord, LocalBootWay,
};
use substruct_wire::messages::{
    CallbackKind, CallbackReply, CallbackRequest, Command, DeployImage, DiscoverReply,
    DiscoverRequest, ErrorCode, ErrorReply, Instruction, SiteEvent, SiteEventKind, WipeMode,
};
use substruct_wire::power::{BmcDriverKind, BootDevice, PowerAction, PowerState};
use substruct_wire::power_msg::{BmcSettings, PowerAck, PowerOp, PowerRequest, PowerResult};
use substruct_wire::report::{
    Bmc, BmcLan, BootMode, Cpu, Dimm, Disk, DiskTransport, Dmi, HardwareReport, Memory, Nic,
    PciDevice,
};
use substruct_wire::{
    decode, encode, BootCredential, BootToken, Mac, MachineId, MessageKind, PowerRequestId, SiteId,
    WireMessage,
};

/// [`SHA_A`] and [`SHA_B`] as postcard writes them: the length (64, `40`), then the ASCII.
macro_rules! sha_a {
    () => {
        "4065336230633434323938666331633134396166626634633839393666623932343237616534316534363439623933346361343935393931623738353262383535"
    };
}
macro_rules! sha_b {
    () => {
        "4030313233343536373839616263646566303132333435363738396162636465663031323334353637383961626364656630313233343536373839616263646566"
    };
}

/// Every kind the code sends, and where. Found with
/// `grep -rn 'substruct_wire::encode(' controller/src edge-agent/src prospector/src`,
/// following each generic call (`encode(r)` on a `Result<Reply, ErrorReply>`, the
/// controller's `put_or_delete::<M>` for KV values) to the type it encodes. Tests and
/// benches send nothing beyond these. `encode` takes only a `WireMessage`, whose kind is
/// a `MessageKind`, so this is also every kind there is (checked below).
const SENT: &[(MessageKind, &str)] = &[
    (MessageKind::DiscoverRequest, "prospector/src/agent/mod.rs (discover)"),
    (MessageKind::DiscoverReply, "controller/src/discover/mod.rs"),
    (
        MessageKind::ErrorReply,
        "controller/src/{discover/mod.rs, provision/callbacks.rs, power.rs}, edge-agent/src/power/serve.rs",
    ),
    (MessageKind::Command, "controller/src/provision/report.rs"),
    (MessageKind::SiteEvent, "edge-agent/src/agent.rs"),
    (
        MessageKind::BootIntent,
        "controller/src/store/edge.rs (KV boot), controller/src/provision/sync.rs (digest)",
    ),
    (
        MessageKind::CallbackRequest,
        "prospector/src/agent/mod.rs (callback), edge-agent/src/install.rs",
    ),
    (MessageKind::CallbackReply, "controller/src/provision/callbacks.rs"),
    (MessageKind::InstallFiles, "controller/src/store/edge.rs (KV install)"),
    (MessageKind::PowerRequest, "controller/src/power.rs"),
    (
        MessageKind::PowerResult,
        "edge-agent/src/power/{serve.rs, results.rs}",
    ),
    (MessageKind::BmcSettings, "controller/src/store/bmc.rs (KV bmc)"),
    (MessageKind::PowerAck, "controller/src/power.rs"),
];

/// The kind checks, one function per kind.
const KINDS: &[fn(&mut Goldens)] = &[
    discover_request,
    discover_reply,
    error_reply,
    command,
    site_event,
    boot_intent,
    callback_request,
    callback_reply,
    install_files,
    power_request,
    power_result,
    bmc_settings,
    power_ack,
];

#[test]
fn golden_bytes_of_every_kind() {
    let mut goldens = Goldens::default();
    for check in KINDS {
        check(&mut goldens);
    }
}

/// The kinds with goldens are exactly the kinds the code sends, which are every kind
/// the envelope knows.
#[test]
fn goldens_cover_every_kind_sent() {
    let mut goldens = Goldens::default();
    for check in KINDS {
        check(&mut goldens);
    }
    let mut covered: Vec<u16> = goldens.covered.iter().map(|k| *k as u16).collect();
    covered.sort_unstable();
    covered.dedup();
    let mut sent: Vec<u16> = SENT.iter().map(|(k, _)| *k as u16).collect();
    sent.sort_unstable();
    let listed = sent.len();
    sent.dedup();
    assert_eq!(sent.len(), listed, "a kind is listed twice in SENT");
    let every: Vec<u16> = (0..=u16::MAX)
        .filter(|v| MessageKind::from_u16(*v).is_some())
        .collect();
    assert_eq!(covered, sent, "kinds with goldens vs kinds sent");
    assert_eq!(sent, every, "kinds sent vs kinds the envelope knows");
}

// ---------------------------------------------------------------------------------
// The kinds.

fn discover_request(g: &mut Goldens) {
    g.check(
        "every field set",
        DiscoverRequest {
            site: site(),
            boot_token: Some(BootCredential::new("c.t-0_1").unwrap()),
            report: full_report(),
        },
        concat!(
            "5342535403000100", // header: SBST, version 3, kind 1 (DiscoverRequest)
            "027331", // site
            "0107632e742d305f31", // boot_token
            "05302e312e30", // report: prospector_version
            "01", // boot_mode: Uefi
            "01016101016201016301016401016501016601016701016801016901016a01016b01016c01016d01016e01016f", // dmi: a to o
            "0103637075010204", // cpu: model, sockets, cores, threads
            "0103766d780103307831", // virtualization, microcode
            "02036165730461767832", // flags
            "8080808002", // memory: total_bytes
            "0101024131808080800401044444523401801901024d31", // dimms
            "08", // disks: 8
            "03766461808080800401016d010244310101770104", // vda: name, size, model, serial, wwn, rotational, Virtio
            "01", // removable
            "02643000000000000000", // d0: Nvme
            "02643100000000000100", // d1: Sata
            "02643200000000000200", // d2: Sas
            "02643300000000000300", // d3: Scsi
            "02643400000000000500", // d4: Usb
            "02643500000000000600", // d5: Mmc
            "02643600000000000700", // d6: Unknown
            "01", // nics: 1
            "0465746830525400000001", // eth0: name, mac
            "010a76697274696f5f6e6574010c303030303a30303a30332e3001e8070101", // driver, pci_address, speed_mbps, carrier
            "01", // pci: 1
            "0c303030303a30303a30332e30f4358020808008", // address, vendor_id, device_id, class
            "01", // bmc: Some
            "0103322e3001a2050103312e32", // ipmi_version, manufacturer_id, firmware
            "0101", // lan: 1, channel
            "010a4d00fa01067374617469630152540077409901ffffff00010a4d0001", // ip, ip_source, mac, netmask, gateway
            "0101", // secure_boot: Some(true)
        ),
    );
    g.check(
        "secure boot off",
        DiscoverRequest {
            site: site(),
            boot_token: None,
            report: HardwareReport {
                secure_boot: Some(false),
                ..HardwareReport::default()
            },
        },
        concat!(
            "5342535403000100",               // header: version 3, kind 1 (DiscoverRequest)
            "027331",                         // site
            "00",                             // boot_token
            "0000",                           // prospector_version, boot_mode: Bios
            "000000000000000000000000000000", // dmi
            "00000000000000",                 // cpu
            "0000",                           // memory
            "000000",                         // disks, nics, pci
            "00",                             // bmc
            "0100",                           // secure_boot: Some(false)
        ),
    );
    g.check(
        "every option empty",
        DiscoverRequest {
            site: site(),
            boot_token: None,
            report: HardwareReport::default(),
        },
        "53425354030001000273310000000000000000000000000000000000000000000000000000000000000000",
    );
}

/// [`DISCOVER_REQUEST_V2`] (and the same report with every option empty) still decodes:
/// a wire version 2 report (before `secure_boot`) from an older prospector, read as
/// today's with `secure_boot: None`. Relabelled as version 3 it does not decode.
#[test]
fn discover_request_v2_still_decodes() {
    let v2 = DiscoverRequest {
        site: site(),
        boot_token: Some(BootCredential::new("c.t-0_1").unwrap()),
        report: HardwareReport {
            secure_boot: None,
            ..full_report()
        },
    };
    let empty = DiscoverRequest {
        site: site(),
        boot_token: None,
        report: HardwareReport::default(),
    };
    for (golden, sample) in [
        (DISCOVER_REQUEST_V2, v2),
        (DISCOVER_REQUEST_V2_EMPTY, empty),
    ] {
        let bytes = unhex(golden);
        assert_eq!(&bytes[4..6], [2, 0], "a version 2 header");
        assert_eq!(decode::<DiscoverRequest>(&bytes).unwrap(), sample);
        let mut as_v3 = bytes;
        as_v3[4] = 3;
        assert!(
            decode::<DiscoverRequest>(&as_v3).is_err(),
            "a v2 body labelled v3"
        );
    }
}

/// A `DiscoverRequest` in wire version 2, with every field set (`full_report`, which
/// v2 wrote without `secure_boot`).
const DISCOVER_REQUEST_V2: &str = concat!(
    "5342535402000100", // header: SBST, version 2, kind 1 (DiscoverRequest)
    "027331",
    "0107632e742d305f31",
    "05302e312e30",
    "01",
    "01016101016201016301016401016501016601016701016801016901016a01016b01016c01016d01016e01016f",
    "0103637075010204",
    "0103766d780103307831",
    "02036165730461767832",
    "8080808002",
    "0101024131808080800401044444523401801901024d31",
    "08",
    "03766461808080800401016d010244310101770104",
    "01",
    "02643000000000000000",
    "02643100000000000100",
    "02643200000000000200",
    "02643300000000000300",
    "02643400000000000500",
    "02643500000000000600",
    "02643600000000000700",
    "01",
    "0465746830525400000001",
    "010a76697274696f5f6e6574010c303030303a30303a30332e3001e8070101",
    "01",
    "0c303030303a30303a30332e30f4358020808008",
    "01", // bmc: Some, and no secure_boot after it
    "0103322e3001a2050103312e32",
    "0101",
    "010a4d00fa01067374617469630152540077409901ffffff00010a4d0001",
);

/// A `DiscoverRequest` in wire version 2 with every option empty.
const DISCOVER_REQUEST_V2_EMPTY: &str =
    "534253540200010002733100000000000000000000000000000000000000000000000000000000000000";

fn discover_reply(g: &mut Goldens) {
    g.check(
        "deploy an image",
        DiscoverReply {
            machine_id: machine(),
            instruction: Instruction::DeployImage(DeployImage {
                path: "d/x.img".try_into().unwrap(),
                sha256: SHA_A.try_into().unwrap(),
                size: 1 << 30,
                disk: Some("vda".into()),
                token: token(),
            }),
        },
        concat!(
            "5342535401000200", // header: version 1, kind 2 (DiscoverReply)
            "036d2d31",         // machine_id
            "03",               // DeployImage
            "07642f782e696d67", // path
            sha_a!(),           // sha256
            "8080808004",       // size
            "0103766461",       // disk
            "027430",           // token
        ),
    );
    g.check(
        "wait",
        DiscoverReply {
            machine_id: machine(),
            instruction: Instruction::Wait,
        },
        "5342535401000200036d2d3100",
    );
}

fn error_reply(g: &mut Goldens) {
    let codes = [
        (
            ErrorCode::Malformed,
            "bad envelope",
            "5342535401000300000c62616420656e76656c6f7065",
        ),
        (
            ErrorCode::UnsupportedVersion,
            "v9",
            "534253540100030001027639",
        ),
        (ErrorCode::WrongSite, "s2", "534253540100030002027332"),
        (
            ErrorCode::TooLarge,
            "disks",
            "534253540100030003056469736b73",
        ),
        (ErrorCode::Unavailable, "kv", "534253540100030004026b76"),
        (
            ErrorCode::Forbidden,
            "token",
            "53425354010003000505746f6b656e",
        ),
        (ErrorCode::IllegalTransition, "", "53425354010003000600"),
    ];
    for (code, message, golden) in codes {
        g.check(
            "each code",
            ErrorReply {
                code,
                message: message.into(),
            },
            golden,
        );
    }
}

fn command(g: &mut Goldens) {
    let instructions = [
        (Instruction::Wait, "5342535401000400036d2d3100"),
        (Instruction::PowerOff, "5342535401000400036d2d3101"),
        (Instruction::Reboot, "5342535401000400036d2d3102"),
        (
            Instruction::DeployImage(DeployImage {
                path: "d/x.img".try_into().unwrap(),
                sha256: SHA_A.try_into().unwrap(),
                size: 5,
                disk: None,
                token: token(),
            }),
            concat!(
                "5342535401000400", // header: version 1, kind 4 (Command)
                "036d2d31",         // machine_id
                "03",               // DeployImage
                "07642f782e696d67", // path
                sha_a!(),           // sha256
                "05",               // size
                "00",               // disk: None
                "027430",           // token
            ),
        ),
        (
            Instruction::Wipe {
                mode: WipeMode::Quick,
                token: token(),
            },
            "5342535401000400036d2d310400027430",
        ),
        (
            Instruction::Wipe {
                mode: WipeMode::Discard,
                token: token(),
            },
            "5342535401000400036d2d310401027430",
        ),
    ];
    for (instruction, golden) in instructions {
        g.check(
            "each instruction",
            Command {
                machine_id: machine(),
                instruction,
            },
            golden,
        );
    }
}

fn site_event(g: &mut Goldens) {
    let events = [
        (
            SiteEventKind::Lease {
                mac: mac(),
                ip: [10, 0, 0, 5],
            },
            "534253540100050002733180d095ffbc31005254000000010a000005",
        ),
        (
            SiteEventKind::Fetch {
                mac: Some(mac()),
                path: "/boot.ipxe".into(),
            },
            "534253540100050002733180d095ffbc3101015254000000010a2f626f6f742e69707865",
        ),
        (
            SiteEventKind::Fetch {
                mac: None,
                path: "x".into(),
            },
            "534253540100050002733180d095ffbc3101000178",
        ),
        (
            SiteEventKind::Heartbeat {
                version: "0.1.0".into(),
            },
            "534253540100050002733180d095ffbc310205302e312e30",
        ),
        (
            SiteEventKind::Cache {
                sha256: vec![SHA_A.try_into().unwrap(), SHA_B.try_into().unwrap()],
            },
            concat!(
                "5342535401000500", // header: version 1, kind 5 (SiteEvent)
                "027331",           // site
                "80d095ffbc31",     // at_unix_ms
                "0302",             // Cache, 2 digests
                sha_a!(),
                sha_b!(),
            ),
        ),
    ];
    for (event, golden) in events {
        g.check(
            "each event",
            SiteEvent {
                site: site(),
                at_unix_ms: AT_UNIX_MS,
                event,
            },
            golden,
        );
    }
}

fn boot_intent(g: &mut Goldens) {
    g.check(
        "install",
        BootIntentRecord {
            machine_id: Some(machine()),
            intent: BootIntent::Install {
                kernel: "k/linux".try_into().unwrap(),
                initrd: "k/initrd".try_into().unwrap(),
                cmdline: "ks={edge}/ks".into(),
            },
        },
        "534253540100060001036d2d3101076b2f6c696e7578086b2f696e697472640c6b733d7b656467657d2f6b73",
    );
    g.check(
        "discover",
        BootIntentRecord {
            machine_id: None,
            intent: BootIntent::Discover,
        },
        "53425354010006000000",
    );
    g.check(
        "local, iPXE exit",
        BootIntentRecord {
            machine_id: Some(machine()),
            intent: BootIntent::Local {
                way: LocalBootWay::IpxeExit,
            },
        },
        "534253540100060001036d2d310200",
    );
    g.check(
        "local, no boot file",
        BootIntentRecord {
            machine_id: Some(machine()),
            intent: BootIntent::Local {
                way: LocalBootWay::NoBootFile,
            },
        },
        "534253540100060001036d2d310201",
    );
}

fn callback_request(g: &mut Goldens) {
    let kinds = [
        (
            CallbackKind::Fetched {
                file: "ks.cfg".into(),
            },
            "534253540100070002733102743000066b732e636667",
        ),
        (CallbackKind::Done, "534253540100070002733102743001"),
        (
            CallbackKind::Failed {
                reason: "disk".into(),
            },
            "534253540100070002733102743002046469736b",
        ),
        (CallbackKind::Wiped, "534253540100070002733102743003"),
    ];
    for (kind, golden) in kinds {
        g.check(
            "each callback",
            CallbackRequest {
                site: site(),
                token: token(),
                kind,
            },
            golden,
        );
    }
}

fn callback_reply(g: &mut Goldens) {
    g.check(
        "with a next instruction",
        CallbackReply {
            machine_id: machine(),
            state: "wiping".into(),
            next: Some(Instruction::Reboot),
        },
        "5342535401000800036d2d3106776970696e670102",
    );
    g.check(
        "without",
        CallbackReply {
            machine_id: machine(),
            state: "deployed".into(),
            next: None,
        },
        "5342535401000800036d2d31086465706c6f79656400",
    );
}

fn install_files(g: &mut Goldens) {
    g.check(
        "two files",
        InstallFilesRecord {
            machine_id: machine(),
            token: token(),
            files: vec![
                InstallFile {
                    name: "ks.cfg".into(),
                    content_type: "text/plain".into(),
                    body: "reboot\n".into(),
                },
                InstallFile {
                    name: "user-data".into(),
                    content_type: "text/yaml".into(),
                    body: "a: 1\n".into(),
                },
            ],
        },
        concat!(
            "5342535401000900", // header: version 1, kind 9 (InstallFiles)
            "036d2d31",         // machine_id
            "027430",           // token
            "02",               // files: 2
            "066b732e6366670a746578742f706c61696e077265626f6f740a", // ks.cfg
            "09757365722d6461746109746578742f79616d6c05613a20310a", // user-data
        ),
    );
}

fn power_request(g: &mut Goldens) {
    let ops = [
        (
            PowerOp::Act(PowerAction::Cycle),
            Some(BootDevice::Pxe),
            "5342535401000a0002733103722d31036d2d310252540000000152540000000201030100026f70",
        ),
        (
            PowerOp::Act(PowerAction::On),
            Some(BootDevice::Disk),
            "5342535401000a0002733103722d31036d2d310252540000000152540000000201000101026f70",
        ),
        (
            PowerOp::Act(PowerAction::Off),
            None,
            "5342535401000a0002733103722d31036d2d3102525400000001525400000002010100026f70",
        ),
        (
            PowerOp::Act(PowerAction::SoftOff),
            None,
            "5342535401000a0002733103722d31036d2d3102525400000001525400000002010200026f70",
        ),
        (
            PowerOp::Status,
            None,
            "5342535401000a0002733103722d31036d2d31025254000000015254000000020000026f70",
        ),
    ];
    for (op, next_boot, golden) in ops {
        g.check(
            "each op and boot device",
            PowerRequest {
                site: site(),
                request_id: request_id(),
                machine_id: machine(),
                macs: vec![mac(), Mac([0x52, 0x54, 0, 0, 0, 2])],
                op,
                next_boot,
                by: "op".into(),
            },
            golden,
        );
    }
}

fn power_result(g: &mut Goldens) {
    g.check(
        "every field set",
        PowerResult {
            site: site(),
            request_id: request_id(),
            machine_id: machine(),
            op: PowerOp::Act(PowerAction::On),
            state: PowerState::On,
            error: Some("timeout".into()),
            attempts: 3,
            cert_pin: Some(SHA_B.into()),
            by: "op".into(),
            at_unix_ms: AT_UNIX_MS,
        },
        concat!(
            "5342535401000b00",   // header: version 1, kind 11 (PowerResult)
            "027331",             // site
            "03722d31",           // request_id
            "036d2d31",           // machine_id
            "0100",               // op: Act(On)
            "00",                 // state: On
            "010774696d656f7574", // error
            "03",                 // attempts
            "01",                 // cert_pin: Some
            sha_b!(),
            "026f70",       // by
            "80d095ffbc31", // at_unix_ms
        ),
    );
    for (state, golden) in [
        (
            PowerState::Off,
            "5342535401000b0002733103722d31036d2d31000100010004706f6c6c80d095ffbc31",
        ),
        (
            PowerState::Unknown,
            "5342535401000b0002733103722d31036d2d31000200010004706f6c6c80d095ffbc31",
        ),
    ] {
        g.check(
            "each state",
            PowerResult {
                site: site(),
                request_id: request_id(),
                machine_id: machine(),
                op: PowerOp::Status,
                state,
                error: None,
                attempts: 1,
                cert_pin: None,
                by: "poll".into(),
                at_unix_ms: AT_UNIX_MS,
            },
            golden,
        );
    }
}

fn bmc_settings(g: &mut Goldens) {
    g.check(
        "redfish, every field set",
        BmcSettings {
            machine_id: machine(),
            driver: BmcDriverKind::Redfish,
            address: "10.0.0.9:443".into(),
            user: "admin".into(),
            password: "pw".into(),
            cert_pin: Some(SHA_B.into()),
            system_id: Some("1".into()),
        },
        concat!(
            "5342535401000c00",           // header: version 1, kind 12 (BmcSettings)
            "036d2d31",                   // machine_id
            "01",                         // driver: Redfish
            "0c31302e302e302e393a343433", // address
            "0561646d696e",               // user
            "027077",                     // password
            "01",                         // cert_pin: Some
            sha_b!(),
            "010131", // system_id
        ),
    );
    g.check(
        "ipmi",
        BmcSettings {
            machine_id: machine(),
            driver: BmcDriverKind::Ipmi,
            address: "10.0.0.9".into(),
            user: "admin".into(),
            password: "pw".into(),
            cert_pin: None,
            system_id: None,
        },
        "5342535401000c00036d2d31000831302e302e302e390561646d696e0270770000",
    );
}

fn power_ack(g: &mut Goldens) {
    g.check(
        "ack",
        PowerAck {
            request_id: request_id(),
        },
        "5342535401000d0003722d31",
    );
}

// ---------------------------------------------------------------------------------
// Sample parts.

const SHA_A: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const SHA_B: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// 2023-11-14T22:13:20Z: a five-byte varint.
const AT_UNIX_MS: u64 = 1_700_000_000_000;

fn site() -> SiteId {
    SiteId::new("s1").unwrap()
}

fn machine() -> MachineId {
    MachineId::new("m-1").unwrap()
}

fn token() -> BootToken {
    BootToken::new("t0").unwrap()
}

fn request_id() -> PowerRequestId {
    PowerRequestId::new("r-1").unwrap()
}

fn mac() -> Mac {
    Mac([0x52, 0x54, 0, 0, 0, 1])
}

/// A report with every field set: each DMI string distinct (a swap shows), one disk per
/// transport.
fn full_report() -> HardwareReport {
    let dmi = |s: &str| Some(s.to_owned());
    let transports = [
        DiskTransport::Nvme,
        DiskTransport::Sata,
        DiskTransport::Sas,
        DiskTransport::Scsi,
        DiskTransport::Usb,
        DiskTransport::Mmc,
        DiskTransport::Unknown,
    ];
    let mut disks = vec![Disk {
        name: "vda".into(),
        size_bytes: 1 << 30,
        model: Some("m".into()),
        serial: Some("D1".into()),
        wwn: Some("w".into()),
        rotational: true,
        transport: DiskTransport::Virtio,
        removable: true,
    }];
    disks.extend(
        transports
            .into_iter()
            .enumerate()
            .map(|(i, transport)| Disk {
                name: format!("d{i}"),
                transport,
                ..Disk::default()
            }),
    );
    HardwareReport {
        prospector_version: "0.1.0".into(),
        boot_mode: BootMode::Uefi,
        dmi: Dmi {
            sys_vendor: dmi("a"),
            product_name: dmi("b"),
            product_version: dmi("c"),
            product_serial: dmi("d"),
            product_uuid: dmi("e"),
            product_sku: dmi("f"),
            product_family: dmi("g"),
            board_vendor: dmi("h"),
            board_name: dmi("i"),
            board_serial: dmi("j"),
            chassis_serial: dmi("k"),
            chassis_asset_tag: dmi("l"),
            bios_vendor: dmi("m"),
            bios_version: dmi("n"),
            bios_date: dmi("o"),
        },
        cpu: Cpu {
            model: Some("cpu".into()),
            sockets: 1,
            cores: 2,
            threads: 4,
            virtualization: Some("vmx".into()),
            microcode: Some("0x1".into()),
            flags: vec!["aes".into(), "avx2".into()],
        },
        memory: Memory {
            total_bytes: 512 << 20,
            dimms: vec![Dimm {
                slot: Some("A1".into()),
                size_bytes: 1 << 30,
                kind: Some("DDR4".into()),
                speed_mts: Some(3200),
                serial: Some("M1".into()),
            }],
        },
        disks,
        nics: vec![Nic {
            name: "eth0".into(),
            mac: mac(),
            driver: Some("virtio_net".into()),
            pci_address: Some("0000:00:03.0".into()),
            speed_mbps: Some(1000),
            carrier: Some(true),
        }],
        pci: vec![PciDevice {
            address: "0000:00:03.0".into(),
            vendor_id: 0x1af4,
            device_id: 0x1000,
            class: 0x020000,
        }],
        bmc: Some(Bmc {
            ipmi_version: Some("2.0".into()),
            manufacturer_id: Some(674),
            firmware: Some("1.2".into()),
            lan: vec![BmcLan {
                channel: 1,
                ip: Some([10, 77, 0, 250].into()),
                ip_source: Some("static".into()),
                mac: Some(Mac([0x52, 0x54, 0, 0x77, 0x40, 0x99])),
                netmask: Some([255, 255, 255, 0].into()),
                gateway: Some([10, 77, 0, 1].into()),
            }],
        }),
        secure_boot: Some(true),
    }
}

// ---------------------------------------------------------------------------------
// The check.

#[derive(Default)]
struct Goldens {
    covered: Vec<MessageKind>,
}

impl Goldens {
    /// `encode(sample) == golden` and `decode(golden) == sample`.
    fn check<M: WireMessage + PartialEq + Debug>(&mut self, what: &str, sample: M, golden: &str) {
        let kind = M::KIND;
        let bytes = encode(&sample).unwrap_or_else(|e| panic!("{kind:?} ({what}): {e}"));
        assert_eq!(hex(&bytes), golden, "{kind:?} ({what}): encode({sample:?})");
        let decoded =
            decode::<M>(&unhex(golden)).unwrap_or_else(|e| panic!("{kind:?} ({what}): {e}"));
        assert_eq!(decoded, sample, "{kind:?} ({what}): decode(golden)");
        self.covered.push(kind);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length {}", hex.len());
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}
